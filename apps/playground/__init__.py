"""The playground: a live session in the browser, on the public REST and WebSocket contract only.

``/playground/`` serves one HTML page and its script (``assets/``), plain
JavaScript with no build step and nothing loaded from elsewhere. A person
pastes a token or logs in, creates or joins a session, and sees the ordered
context stream, presence and typing, the AI state and suggestions as they
arrive (accept and reject send feedback); an explicit query asks for
suggestions. After the network drops, a banner shows and the page reconnects
and sends ``resume`` with the last seq it saw, so nothing is missed.
The server side only serves the files: everything else is the client.
"""
