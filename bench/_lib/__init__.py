"""What the benchmarks share; nothing in this package is a benchmark itself.

``make bench`` runs every ``bench/*.py``; the settings, URL conf and setup
helpers live here so that loop meets benchmarks only.
"""
