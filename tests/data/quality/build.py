"""Compose the labelled retrieval conversations in ``dev.json`` and ``test.json``.

Run: ``.venv/bin/python tests/data/quality/build.py`` (deterministic; the JSON
files are committed, this script only documents how they were put together).

Every thread below is hand-written: the events that carry the answer are
marked ``rel``, a probe (``probe``) is the later event that asks for them, and
``trap`` / ``dist`` events are unlabelled distractors (a trap shares the
probe's words with another meaning; a distractor mentions the same entity but
does not answer). A conversation is one team channel: one thread of each case
type, interleaved with everyday chatter (``FILLER``), 30-80 events in all.

Case types:

- ``paraphrase``: the probe restates the earlier event in other words;
- ``lexical_trap``: the probe shares words with a trap event of another
  meaning, the related event says it in other words;
- ``recency``: several updates on one subject; only the latest answers "where
  are we now";
- ``reversed_decision``: a decision, later overridden; the label points at the
  latest (overriding) event;
- ``long_range``: the fact is among the first events, the probe among the last.

Threads alternate between the two parts (even index: dev, odd: test), so no
thread, and no conversation, is in both.

Long on purpose: the hand-written threads and chatter below are the data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SEED = 18

Thread = list[tuple[str, str]]  # (tag, text); tag in rel, probe, trap, dist, ctx

PARAPHRASE: list[Thread] = [
    [
        ("rel", "The nightly backup job to S3 has failed three nights in a row."),
        ("probe", "Our overnight snapshots haven't reached object storage for several days now, right?"),
    ],
    [
        ("rel", "Checkout latency doubled after we turned on the new fraud scoring call."),
        ("probe", "Ever since the risk check went live, paying takes twice as long."),
    ],
    [
        ("rel", "Customers on Android 12 can't upload photos larger than 10 MB; the app just spins."),
        ("probe", "Big image uploads hang forever on some newer Android phones."),
    ],
    [
        ("rel", "Finance wants the invoice PDFs to show our VAT number in the header."),
        ("probe", "Accounting asked for the tax registration ID at the top of each bill."),
    ],
    [
        ("rel", "The search index rebuild takes about six hours, so we can only run it over the weekend."),
        ("probe", "Reindexing is too slow to do on a weekday, it eats most of a working day."),
    ],
    [
        ("rel", "Marketing will send the newsletter to everyone who signed up before June."),
        ("probe", "So the email campaign goes to all subscribers who joined in the first half of the year?"),
    ],
    [
        ("rel", "Our error budget for the API is spent for this month; no risky deploys until the 1st."),
        ("probe", "We've burned through our reliability allowance, so hold off on dangerous releases for now."),
    ],
    [
        ("rel", "The onboarding flow loses about 40% of users at the phone verification step."),
        ("probe", "Almost half of new signups drop off when we ask them to confirm their mobile number."),
    ],
    [
        ("rel", "Legal says we must delete inactive accounts after 24 months under the new policy."),
        ("probe", "Per the lawyers, dormant users have to be purged once they've been idle for two years."),
    ],
    [
        ("rel", "The mobile team is blocked until the design system ships the new button components."),
        ("probe", "App developers can't move forward without the updated UI kit controls."),
    ],
    [
        ("rel", "Support tickets about password resets tripled since we changed the email provider."),
        ("probe", "Since switching mail vendors we get far more complaints that reset links never arrive."),
    ],
    [
        ("rel", "The data warehouse bill jumped 30% because the dashboards rerun full scans every hour."),
        ("probe", "Analytics costs went up a lot; the hourly reports query entire tables each time."),
    ],
    [
        ("rel", "Our biggest customer wants single sign-on through Okta before they roll out to their sales org."),
        ("probe", "The largest account needs identity-provider login set up before expanding to their sellers."),
    ],
    [
        ("rel", "Half the integration tests fail on Mondays because the fixture dates are hard-coded to weekdays."),
        ("probe", "Some end-to-end checks break at the start of every week due to fixed calendar values in test data."),
    ],
    [
        ("rel", "The warehouse scanners lose Wi-Fi near the loading dock, so pick confirmations arrive late."),
        ("probe", "Handheld devices drop their network connection by the truck bays and confirmations lag."),
    ],
    [
        ("rel", "We agreed to give the interns read-only access to production logs, nothing more."),
        ("probe", "Trainees should be able to look at live log output but not change anything, correct?"),
    ],
    [
        ("rel", "The translation vendor needs the German strings by Friday to hit the launch."),
        ("probe", "The localisation agency wants the German copy before the end of the week or we miss go-live."),
    ],
    [
        ("rel", "Memory on the report worker climbs steadily until the kernel kills it every couple of days."),
        ("probe", "The reporting process keeps growing its RAM use until it gets OOM-killed."),
    ],
    [
        ("rel", "Users complain the dashboard clock shows UTC instead of their local time."),
        ("probe", "People are confused because timestamps on the overview page aren't in their own timezone."),
    ],
    [
        ("rel", "Our SSL certificate for the partner portal expires at the end of the month."),
        ("probe", "The TLS cert on the partner site runs out in a few weeks."),
    ],
    [
        ("rel", "The CEO wants a one-page summary of churn reasons before the board meeting."),
        ("probe", "Leadership asked for a short write-up on why customers leave, ahead of the directors' session."),
    ],
    [
        ("rel", "The payment retries hammer the bank's API and we got rate-limited twice yesterday."),
        ("probe", "Our repeated charge attempts are overloading the card processor and they throttled us."),
    ],
]

LEXICAL_TRAP: list[Thread] = [
    [
        ("trap", "The bank's Leeds branch asked for a product demo next Tuesday."),
        ("rel", "No merges into rc-4.2 until QA signs off on Thursday."),
        ("trap", "The frozen yogurt machine in the kitchen is fixed, enjoy."),
        ("probe", "Is the release branch still frozen?"),
    ],
    [
        ("trap", "I have fond memories of the Python meetup in Berlin, we should sponsor it again."),
        ("rel", "The nightly ETL worker's RSS grows past 8 GB because it loads the whole CSV at once."),
        ("probe", "Why is the Python job eating so much memory?"),
    ],
    [
        ("trap", "Found the memory leak in the image resizer, the fix is in PR 2210."),
        ("rel", "Facilities patched the pipe under the sink on the third floor, no more water on the floor."),
        ("probe", "Did we fix the leak in the kitchen?"),
    ],
    [
        ("trap", "Our user-research cluster analysis of the survey answers is ready for review."),
        ("rel", "The Kubernetes nodes in eu-west are provisioned and passing health checks."),
        ("probe", "Is the new cluster ready?"),
    ],
    [
        ("trap", "The users table migration on Friday will lock writes for ten minutes."),
        ("rel", "I booked eight seats at Luigi's for our Friday evening meal."),
        ("probe", "Is the table for the Friday team dinner sorted?"),
    ],
    [
        ("trap", "The CI pipeline is red again because the lint step times out."),
        ("rel", "Sales has eleven qualified deals worth about 1.2M expected to close between July and September."),
        ("probe", "How's the sales pipeline looking for Q3?"),
    ],
    [
        ("trap", "The music track on the promo video drowns out the voice-over."),
        ("rel", "Burndown looks fine, we've closed 34 of 40 story points with three days left."),
        ("probe", "Is this sprint on track?"),
    ],
    [
        ("trap", "Congrats to Priya, who was promoted to engineering manager!"),
        ("rel", "Version 14 of the ranking network beat the baseline and is now serving traffic."),
        ("probe", "Did the new recommendation model get promoted?"),
    ],
    [
        ("trap", "I closed twenty support tickets this morning, the queue is finally short."),
        ("rel", "Bought three passes for KubeCon Paris, confirmations are in your inbox."),
        ("probe", "Did you get the tickets for the conference?"),
    ],
    [
        ("trap", "The server room is warm again, facilities say the AC unit needs a part."),
        ("rel", "Hit rate is back to 92% twenty minutes after the rollout."),
        ("probe", "Is the cache warm again after the deploy?"),
    ],
    [
        ("trap", "The migration of our office to the fifth floor is owned by facilities."),
        ("rel", "Ana is moving the orders data from the old MySQL box to Postgres this sprint."),
        ("probe", "Who owns the orders migration?"),
    ],
    [
        ("trap", "HR says the warehouse workers move to the new pay scale from April."),
        ("rel", "Queue depth on ai.batch hits 50k at 9am; two more consumers would drain it."),
        ("probe", "Should we scale the Celery workers?"),
    ],
    [
        ("trap", "Landscapers will patch the lawn by the entrance once the rain stops."),
        ("rel", "The fix for the CVE in the image library is merged and deployed to all regions."),
        ("probe", "Did the security patch land?"),
    ],
    [
        ("trap", "The new office has 40 seats, and the contract with the furniture company covers the chairs."),
        ("rel", "Hooli signed for 250 user licences, starting next quarter."),
        ("probe", "How many seats does the Hooli contract cover?"),
    ],
    [
        ("trap", "The cold storage room in the Rotterdam warehouse needs a new compressor, says the maintenance plan."),
        ("rel", "Logs older than 90 days will move to Glacier to cut the bill."),
        ("probe", "What's the plan for cold storage of our logs?"),
    ],
    [
        ("trap", "The launch party clashed with the all-hands, so we moved it to Thursday."),
        ("rel", "The iOS app no longer quits on startup after we removed the broken analytics SDK."),
        ("probe", "Is the crash on app launch fixed?"),
    ],
    [
        ("trap", "As a token of thanks for the release crunch, lunch is on us on Friday."),
        ("rel", "I replaced the leaked GitHub deploy key and revoked the old credential."),
        ("probe", "Did anyone rotate the leaked token?"),
    ],
    [
        ("trap", "The bridge club meets on Wednesdays in the canteen, a nice way to network with other teams."),
        ("rel", "Peering between the staging and prod VPCs is live, routes tested."),
        ("probe", "Is the network bridge between the two VPCs up?"),
    ],
    [
        ("trap", "The spring on the meeting room door is broken again."),
        ("rel", "We're still shipping version 5 in April as planned."),
        ("probe", "Is the spring release still on?"),
    ],
    [
        ("trap", "The target environment variable for the campaign job is wrong, it points at staging."),
        ("rel", "The signup drive brought 4,100 new accounts against a goal of 4,000."),
        ("probe", "Did we hit the target for the campaign?"),
    ],
    [
        ("trap", "I generated the API keys for the new service accounts, they're in the vault."),
        ("rel", "Reception has the office badges and door fobs for Monday's starters."),
        ("probe", "Are the keys ready for the new hires?"),
    ],
    [
        ("trap", "Contoso's football pitch booking for the company match is confirmed."),
        ("rel", "Contoso's CTO loved the walkthrough and wants a proposal by Monday."),
        ("probe", "Did our sales pitch land well with Contoso?"),
    ],
]

RECENCY: list[Thread] = [
    [
        ("ctx", "Staging deploy started, 3 of 12 services are done."),
        ("ctx", "Staging deploy at 8 of 12, the search service is slow to come up."),
        ("rel", "Staging deploy finished, all 12 services healthy."),
        ("probe", "Where are we with the staging deploy?"),
    ],
    [
        ("ctx", "Checkout errors at 5%, investigating."),
        ("ctx", "Checkout error rate down to 1% after rolling back the cart service."),
        ("rel", "Checkout errors are back to zero, incident closed."),
        ("probe", "What's the current state of the checkout incident?"),
    ],
    [
        ("ctx", "We have three candidates for the SRE role."),
        ("ctx", "Two SRE candidates left after the technical interviews."),
        ("rel", "We made an offer to Dana for the SRE position and she accepted."),
        ("probe", "How is the SRE hiring going?"),
    ],
    [
        ("ctx", "Test coverage is at 61% on the billing module."),
        ("ctx", "Billing coverage is up to 70% with the new refund tests."),
        ("rel", "Billing module coverage reached 78% today."),
        ("probe", "What's billing test coverage now?"),
    ],
    [
        ("ctx", "Q2 cloud spend is tracking at 85k."),
        ("ctx", "Revised cloud forecast for Q2 is 92k after adding the GPU nodes."),
        ("rel", "Final Q2 cloud spend came in at 97k."),
        ("probe", "What did we end up spending on cloud this quarter?"),
    ],
    [
        ("ctx", "Globex is unhappy with report export times."),
        ("ctx", "Globex got a workaround: large exports are sent by email."),
        ("rel", "Globex confirmed the new export is fast enough and closed the escalation."),
        ("probe", "Is the Globex escalation still open?"),
    ],
    [
        ("ctx", "Load test run 1: 1,200 rps before p99 went over 500 ms."),
        ("ctx", "Load test run 2 with connection pooling: 2,000 rps."),
        ("rel", "Load test run 3 with the read replica: 3,100 rps at p99 under 400 ms."),
        ("probe", "How many requests per second do we handle in the latest load test?"),
    ],
    [
        ("ctx", "The movers come on the 12th."),
        ("ctx", "Movers rescheduled to the 15th."),
        ("rel", "Movers confirmed for the 19th, that's the final date."),
        ("probe", "When are the movers coming?"),
    ],
    [
        ("ctx", "The payments e2e test failed 4 times this week."),
        ("ctx", "Quarantined the flaky payments e2e test."),
        ("rel", "The payments e2e test is fixed and back in the suite, 50 green runs."),
        ("probe", "Is the payments end-to-end test still quarantined?"),
    ],
    [
        ("ctx", "Open P1 bugs for the release: 9."),
        ("ctx", "Down to 4 P1 bugs for the release."),
        ("rel", "Zero open P1 bugs, the release is unblocked."),
        ("probe", "How many P1 bugs are left for the release?"),
    ],
    [
        ("ctx", "Datadog quoted 120k a year."),
        ("ctx", "Datadog came back with 98k after we mentioned Grafana."),
        ("rel", "Signed with Datadog at 90k a year for two years."),
        ("probe", "What price did we get from Datadog?"),
    ],
    [
        ("ctx", "Moved 20% of tenants to the new database."),
        ("ctx", "Half of the tenants are on the new database now."),
        ("rel", "All tenants are migrated to the new database, the old cluster is read-only."),
        ("probe", "How far along is the tenant migration?"),
    ],
    [
        ("ctx", "CI takes 38 minutes per run."),
        ("ctx", "CI is down to 25 minutes with dependency caching."),
        ("rel", "CI is now 14 minutes after splitting the test shards."),
        ("probe", "How long does a CI run take these days?"),
    ],
    [
        ("ctx", "45 people signed up for the beta."),
        ("ctx", "The beta list is at 130 people."),
        ("rel", "We closed beta signups at 310 people."),
        ("probe", "How many beta testers do we have?"),
    ],
    [
        ("ctx", "rc1 is out for QA."),
        ("ctx", "rc2 fixes the login regression QA found in rc1."),
        ("rel", "rc3 is the final release candidate, QA passed everything."),
        ("probe", "Which release candidate are we on?"),
    ],
    [
        ("ctx", "NPS this month: 31."),
        ("ctx", "NPS climbed to 38 after the onboarding fixes."),
        ("rel", "Latest NPS readout is 44."),
        ("probe", "What's our NPS at the moment?"),
    ],
    [
        ("ctx", "Ordered laptops for the new hires, ETA three weeks."),
        ("ctx", "Laptop delivery slipped, the ETA is now the end of the month."),
        ("rel", "The laptops arrived and IT is imaging them."),
        ("probe", "Did the laptops for the new people show up?"),
    ],
    [
        ("ctx", "Postmortem draft for the DNS outage is in the wiki."),
        ("ctx", "DNS postmortem reviewed, two action items added."),
        ("rel", "The DNS outage postmortem is final and all action items are assigned."),
        ("probe", "Is the DNS postmortem done?"),
    ],
    [
        ("ctx", "Disk on db-3 is at 70%."),
        ("ctx", "db-3 disk at 85%, close to the alert threshold."),
        ("rel", "Expanded the db-3 volume, disk is at 40% now."),
        ("probe", "How full is the disk on db-3?"),
    ],
    [
        ("ctx", "Shopify app submitted for review."),
        ("ctx", "Shopify rejected the app, we need a privacy policy link."),
        ("rel", "Shopify approved the app, it's live in their store."),
        ("probe", "What's happening with the Shopify app review?"),
    ],
    [
        ("ctx", "We have 12 paying customers on the enterprise plan."),
        ("ctx", "The enterprise plan is at 15 customers."),
        ("rel", "The enterprise plan is now at 19 paying customers."),
        ("probe", "How many enterprise customers do we have?"),
    ],
    [
        ("ctx", "Mei is on call this week."),
        ("ctx", "Swapped: Raj covers on-call from Wednesday."),
        ("rel", "Raj is sick, Lena takes on-call for the rest of the week."),
        ("probe", "Who's on call right now?"),
    ],
]

REVERSED: list[Thread] = [
    [
        ("ctx", "Let's use MySQL for the new inventory service, the team knows it well."),
        ("rel", "Change of plan: inventory goes on PostgreSQL, we need the JSONB support."),
        ("probe", "Which database are we using for inventory?"),
    ],
    [
        ("ctx", "Launch date for the mobile app is May 3."),
        ("rel", "We're pushing the mobile launch to May 17 because of the App Store review backlog."),
        ("probe", "When does the mobile app launch?"),
    ],
    [
        ("ctx", "Dark mode will be off by default in the new release."),
        ("rel", "Design overruled us: dark mode ships switched on by default."),
        ("probe", "What's the default for dark mode?"),
    ],
    [
        ("ctx", "We'll hold the team offsite in Lisbon."),
        ("rel", "The offsite moved to Porto, the Lisbon hotels were booked out."),
        ("probe", "Where's the offsite going to be?"),
    ],
    [
        ("ctx", "The free tier keeps 5 projects."),
        ("rel", "After the pricing review the free tier is cut to 3 projects."),
        ("probe", "How many projects does the free plan allow?"),
    ],
    [
        ("ctx", "Let's write the new CLI in Go."),
        ("rel", "Scrap Go for the CLI, we'll do it in Rust so we can share the parser crate."),
        ("probe", "What language is the CLI going to be written in?"),
    ],
    [
        ("ctx", "Retros will be every Friday afternoon."),
        ("rel", "Retros move to every other Thursday, Fridays are too busy."),
        ("probe", "When are the retrospectives?"),
    ],
    [
        ("ctx", "We're sunsetting the v1 API on June 30."),
        ("rel", "Big customers pushed back, so the v1 API shutdown is delayed to December 31."),
        ("probe", "When does the old API get turned off?"),
    ],
    [
        ("ctx", "Ana will lead the search rewrite."),
        ("rel", "Ana is moving to the data team, so Kofi takes over leading the search rewrite."),
        ("probe", "Who's leading the search rewrite?"),
    ],
    [
        ("ctx", "Code freeze starts Monday."),
        ("rel", "Code freeze is postponed to Wednesday to get the payments fix in."),
        ("probe", "When does the code freeze begin?"),
    ],
    [
        ("ctx", "Support hours will be 9 to 5 CET."),
        ("rel", "We extended support to 8 to 8 CET after the US customers signed."),
        ("probe", "What are our support hours?"),
    ],
    [
        ("ctx", "We'll host the docs on GitBook."),
        ("rel", "Reversing the docs decision: we'll self-host with MkDocs because GitBook's pricing changed."),
        ("probe", "Where will the documentation live?"),
    ],
    [
        ("ctx", "Password minimum length stays at 8 characters."),
        ("rel", "The security review says 12 characters minimum, so I'm updating the password policy."),
        ("probe", "What's the minimum password length?"),
    ],
    [
        ("ctx", "The conference booth is going to be the small 3x3 one."),
        ("rel", "We upgraded to the 6x3 booth after the sponsorship budget doubled."),
        ("probe", "How big is our booth?"),
    ],
    [
        ("ctx", "We'll only support Chrome and Firefox at launch."),
        ("rel", "Safari is in after all, a third of the pilot users are on Macs."),
        ("probe", "Which browsers do we support at launch?"),
    ],
    [
        ("ctx", "The refund window is 14 days."),
        ("rel", "Legal requires 30 days in the EU, so the refund window is 30 days everywhere."),
        ("probe", "How long do customers have to ask for a refund?"),
    ],
    [
        ("ctx", "Daily standup is at 9:30."),
        ("rel", "Standup moves to 10:15 so the Toronto folks can join."),
        ("probe", "What time is standup now?"),
    ],
    [
        ("ctx", "We'll bill enterprise customers annually in advance."),
        ("rel", "Finance changed it: enterprise accounts are invoiced quarterly."),
        ("probe", "How often do we bill enterprise customers?"),
    ],
    [
        ("ctx", "Let's keep the monolith and only split the worker out."),
        ("rel", "After the scaling review we're splitting billing into its own service as well."),
        ("probe", "Are we breaking billing out of the monolith?"),
    ],
    [
        ("ctx", "The team lunch budget is 15 euros per person."),
        ("rel", "Budget for the team lunch is raised to 25 euros a head."),
        ("probe", "How much can we spend per person at the team lunch?"),
    ],
    [
        ("ctx", "The beta will be invite-only."),
        ("rel", "We're opening the beta to anyone with a work email address."),
        ("probe", "Who can join the beta?"),
    ],
    [
        ("ctx", "We picked Twilio for SMS."),
        ("rel", "Switching the SMS provider to MessageBird, Twilio can't deliver in Indonesia."),
        ("probe", "Which SMS provider are we going with?"),
    ],
]

LONG_RANGE: list[Thread] = [
    [
        ("rel", "Hendricks renews on 14 March and wants SAML before then."),
        ("dist", "Hendricks reported a bug in the CSV export, ticket filed."),
        ("probe", "Remind me, when is the Hendricks renewal?"),
    ],
    [
        ("rel", "The staging database password is rotated by Vault every 24 hours, never paste it in chat."),
        ("probe", "How often does Vault change the staging DB credentials?"),
    ],
    [
        ("rel", "Initech's data must stay in the Frankfurt region per their contract."),
        ("dist", "Initech asked for a second admin seat."),
        ("probe", "Where are we allowed to store Initech's data?"),
    ],
    [
        ("rel", "The feature flag for the new editor is called editor_v2_rollout."),
        ("probe", "What was the name of the flag for the new editor?"),
    ],
    [
        ("rel", "Priya's parental leave starts 1 August; Omar covers the billing on-call while she's away."),
        ("probe", "Who covers billing when Priya is on leave?"),
    ],
    [
        ("rel", "Our AWS account for the demo environment is 4417-2290-1183."),
        ("dist", "The demo environment is slow today, someone is running a load test on it."),
        ("probe", "What's the AWS account number for the demo environment?"),
    ],
    [
        ("rel", "The Umbrella Corp pilot has 40 users and ends on 30 September."),
        ("probe", "How many users are in the Umbrella pilot?"),
    ],
    [
        ("rel", "Max upload size is set to 25 MB in nginx, and the CDN caps it at 100 MB."),
        ("probe", "What's the upload limit in nginx?"),
    ],
    [
        ("rel", "The on-prem customer Vandelay runs our agent on CentOS 7, so no newer glibc."),
        ("dist", "Vandelay's admin wants a call about the agent upgrade next week."),
        ("probe", "Which OS is Vandelay running the agent on?"),
    ],
    [
        ("rel", "The rate limit for the public API is 600 requests per minute per key."),
        ("probe", "What's the per-key rate limit on the public API?"),
    ],
    [
        ("rel", "The design for the checkout redesign is in the Figma file 'Checkout 2025 final'."),
        ("probe", "Which Figma file has the checkout redesign?"),
    ],
    [
        ("rel", "Soylent's invoices go to ap@soylent.example, not to the account owner."),
        ("dist", "Soylent upgraded to the team plan this morning."),
        ("probe", "Where do Soylent's invoices get sent?"),
    ],
    [
        ("rel", "The Kafka topic orders.v3 keeps seven days of retention."),
        ("probe", "How long does orders.v3 keep messages?"),
    ],
    [
        ("rel", "Wonka's SLA is 99.95% uptime with a 4-hour response for severity 1."),
        ("dist", "Wonka sent over their new logo for the status page."),
        ("probe", "What SLA did we promise Wonka?"),
    ],
    [
        ("rel", "The mobile app's minimum supported iOS version is 15."),
        ("probe", "What's the lowest iOS version the app supports?"),
    ],
    [
        ("rel", "Pied Piper's compression benchmark file is bench/corpus-7.tar on the shared drive."),
        ("probe", "Where's the Pied Piper benchmark corpus?"),
    ],
    [
        ("rel", "Acme's procurement contact is Ruth Nakamura, she signs anything over 50k."),
        ("dist", "Acme's engineers joined the webinar yesterday."),
        ("probe", "Who signs Acme's large purchases?"),
    ],
    [
        ("rel", "The GDPR deletion job runs every Sunday at 02:00 UTC."),
        ("probe", "When does the GDPR deletion job run?"),
    ],
    [
        ("rel", "Refund questions from the support inbox are forwarded to the Zendesk view 'Tier 2 - billing'."),
        ("probe", "Which Zendesk view handles refund questions?"),
    ],
    [
        ("rel", "Stark Industries pays in USD; every other customer pays in EUR."),
        ("dist", "Stark Industries wants a quote for fifty more seats."),
        ("probe", "What currency does Stark Industries pay in?"),
    ],
    [
        ("rel", "The legacy SOAP endpoint for Tyrell is /ws/v1/orders and it can't be renamed."),
        ("probe", "What's the path of Tyrell's SOAP endpoint?"),
    ],
    [
        ("rel", "The penetration test by Cobalt is booked for the week of 8 April."),
        ("probe", "When is the Cobalt pentest?"),
    ],
]

# Everyday chatter between the threads: none of it answers a probe.
FILLER: list[str] = [
    "Morning all!",
    "Can someone review PR {n}? It's a small typo fix in the README.",
    "I'm out tomorrow afternoon for a dentist appointment.",
    "Thanks, that worked.",
    "Who took the HDMI adapter from the big meeting room?",
    "Lunch order closes at 11:45, add yourselves to the sheet.",
    "Rebased my branch, the conflicts were only in the changelog.",
    "Heads up: I'm renaming the utils module to helpers in PR {n}.",
    "Sorry, was in a call, catching up now.",
    "Does anyone know the guest wifi password?",
    "Pushed a fix for the linter warnings.",
    "Nice work everyone on last week's demo.",
    "I'll be a few minutes late to the planning meeting.",
    "Can we move our one-on-one to Thursday?",
    "There's cake in the kitchen for Sam's birthday.",
    "The printer on the second floor is jammed again.",
    "Added the meeting notes to the wiki.",
    "Let's take this to a thread.",
    "I updated the onboarding doc with the new laptop setup steps.",
    "FYI the office closes early on Friday.",
    "Does anyone have a spare USB-C charger?",
    "Bumped the lodash version to silence the audit warning.",
    "I'll pair with Jonas on the flaky date picker this afternoon.",
    "Merged PR {n}, thanks for the quick review.",
    "Reminder to fill in the engagement survey by Wednesday.",
    "The parking garage is closed for cleaning on Saturday.",
    "Who's up for a coffee run?",
    "Just a reminder that timesheets are due today.",
    "I'm working from home today, ping me on chat.",
    "Good catch, I'll add a test for that.",
    "I renamed the Jira board to match the new team name.",
    "Can someone share the link to the design critique recording?",
    "Fixed the broken link in the footer.",
    "The all-hands slides are in the shared folder.",
    "Welcome to the channel, Noor!",
    "Please don't push directly to main, even for small fixes.",
    "I'm going to be offline for an hour, doctor's appointment.",
    "The new monitors for the desks arrived.",
    "Has anyone seen my blue notebook? I left it in room 4B.",
    "Approved, ship it.",
    "I'll write up a short proposal and share it tomorrow.",
    "Anyone know a good place for lunch near the station?",
    "The quarterly security training link is in your email.",
    "Thanks for covering for me yesterday.",
    "Cleaned up the stale branches older than six months.",
    "Let's sync after lunch.",
    "I added a pre-commit hook for trailing whitespace.",
    "Hackathon ideas are welcome in the spreadsheet.",
    "The coffee machine is descaling, give it ten minutes.",
    "Updated my status to away, back at 3.",
    "Can I get edit access to the roadmap doc?",
    "Great question, let me check and get back to you.",
    "I moved the old screenshots to the archive folder.",
    "We're trying a new agenda format for the weekly sync.",
    "Happy Friday everyone!",
    "Can someone water the plants while I'm on holiday?",
    "The bike rack downstairs is full again.",
    "Small refactor of the date helpers in PR {n}, no behaviour change.",
    "I'll be in the Berlin office next week if anyone wants to meet.",
    "The recording of yesterday's tech talk is up.",
    "Who is organising the summer party this year?",
    "I've fixed the typo in the error message.",
    "Can you resend the calendar invite? It didn't show up for me.",
    "Please add your holiday dates to the team calendar.",
    "That's a fair point, I hadn't thought of it.",
    "I'm blocking out Tuesday morning for focus time.",
    "Thanks for the detailed write-up.",
    "I upgraded my laptop to the new OS version, no problems so far.",
    "The fire drill is scheduled for 2pm on Thursday.",
    "Let's keep an eye on it and revisit next week.",
    "Uploaded the team photo from the offsite last year to the shared album.",
    "Can someone explain the acronym in the last email?",
    "I'll grab a meeting room for the interview panel.",
    "Added two more emoji to the workspace, you're welcome.",
    "The whiteboard markers are all dry, I'll order new ones.",
    "Did anyone else get the weird calendar spam this morning?",
    "Moving my desk to the window side, come say hi.",
    "Documented the local setup quirks for Windows users.",
    "I'll take notes at today's meeting.",
    "Sounds good to me.",
    "I'm not sure, maybe ask in the platform channel.",
    "Quick poll: pizza or sushi for the hack night?",
    "Turned off the noisy notification for merged PRs.",
    "The elevator on the left is out of service today.",
    "Fixed the alignment of the logo in the email template.",
    "Please update your emergency contact details in the HR tool.",
    "Shared the book recommendation from the reading club.",
    "I'll be at the conference all day, slow to reply.",
    "Somebody left their umbrella in the lobby.",
    "Converted the old diagrams to the new drawing tool.",
    "Let me know if you need a hand with that.",
    "Re-ran the job and it passed this time.",
    "I've booked the quiet room for the afternoon.",
    "Added the new hires to the team mailing list.",
    "The canteen has a vegan option every Wednesday now.",
    "Closed the duplicate issue {n}.",
    "Can we get the agenda before the meeting next time?",
    "I put the spare keyboard back in the cupboard.",
    "Sent the thank-you note to the speakers.",
    "I'm taking a long weekend, back on Tuesday.",
    "Replied to the recruiter about the referral.",
    "The Christmas party date poll is open.",
    "Lowered the log level of the noisy debug message.",
    "Who has the key to the bike storage?",
    "Nice, thanks for sorting that out.",
    "Archived the old project channel.",
    "I'll demo the prototype at the next show-and-tell.",
    "Swapped the sticky notes for the digital board, easier to share.",
    "Does the Monday meeting still need a dial-in?",
    "Updated the team page with everyone's new photos.",
    "The water cooler on our floor is empty.",
    "Cleaned up the unused feature toggles in the settings page.",
    "I'll be at the school play on Thursday afternoon.",
    "Let's add it to the parking lot for the retro.",
    "Someone is giving away free concert tickets in the general channel.",
    "Thanks for the reminder!",
]

PEOPLE = [
    "maria",
    "jonas",
    "priya",
    "tomas",
    "lena",
    "kofi",
    "mei",
    "omar",
    "sam",
    "noor",
    "dana",
    "raj",
    "ines",
    "viktor",
    "aiko",
    "felix",
]

CASES: list[tuple[str, list[Thread]]] = [
    ("paraphrase", PARAPHRASE),
    ("lexical_trap", LEXICAL_TRAP),
    ("recency", RECENCY),
    ("reversed_decision", REVERSED),
    ("long_range", LONG_RANGE),
]


def _conversation(number: int, threads: list[tuple[str, Thread]], rng: random.Random) -> dict[str, Any]:
    people = rng.sample(PEOPLE, rng.randint(4, 6))
    filler = [t.replace("{n}", str(rng.randint(1200, 4800))) for t in rng.sample(FILLER, rng.randint(20, 58))]
    timeline: list[tuple[str, str, tuple[int, int] | None]] = [("filler", t, None) for t in filler]
    long_range = [t for t in threads if t[0] == "long_range"]
    for t_index, (case, thread) in enumerate(threads):
        if case == "long_range":
            continue
        if case == "lexical_trap":
            # The trap is as likely to come after the answer as before it.
            head = thread[:-1]
            rng.shuffle(head)
            thread = [*head, thread[-1]]
            threads[t_index] = (case, thread)
        # The other threads anywhere after the opening events, in order.
        indices = sorted(rng.sample(range(3, len(timeline) + 1), len(thread)))
        for offset, e_index in enumerate(reversed(range(len(thread)))):
            tag, text = thread[e_index]
            timeline.insert(indices[len(thread) - 1 - offset], (tag, text, (t_index, e_index)))
    for case, thread in long_range:
        t_index = threads.index((case, thread))
        # The fact among the first three events, distractors in the last
        # third, the probe among the last three.
        timeline.insert(rng.randint(0, 2), (thread[0][0], thread[0][1], (t_index, 0)))
        for e_index in range(1, len(thread) - 1):
            tag, text = thread[e_index]
            timeline.insert(rng.randint(2 * len(timeline) // 3, len(timeline) - 2), (tag, text, (t_index, e_index)))
        tag, text = thread[-1]
        timeline.insert(len(timeline) - rng.randint(0, 2), (tag, text, (t_index, len(thread) - 1)))
    cid = f"c{number:02d}"
    events: list[dict[str, Any]] = []
    event_id: dict[tuple[int, int], str] = {}
    owners = {t_index: rng.choice(people) for t_index in range(len(threads))}
    for order, (tag, text, ref) in enumerate(timeline, start=1):
        eid = f"{cid}-e{order:02d}"
        if ref is None or tag == "probe":
            author = rng.choice(people)
        else:
            # Thread updates mostly come from the thread's owner.
            author = owners[ref[0]] if rng.random() < 0.7 else rng.choice(people)
        kind = "note" if tag == "filler" and rng.random() < 0.15 else "context_update"
        events.append({"id": eid, "order": order, "author": author, "kind": kind, "text": text})
        if ref is not None:
            event_id[ref] = eid
    probes: list[dict[str, Any]] = []
    for t_index, (case, thread) in enumerate(threads):
        probe_index = next(i for i, (tag, _) in enumerate(thread) if tag == "probe")
        probe_id = event_id[(t_index, probe_index)]
        probe_event = next(e for e in events if e["id"] == probe_id)
        related = [event_id[(t_index, i)] for i, (tag, _) in enumerate(thread) if tag == "rel"]
        assert all(r < probe_id for r in related), (cid, case)
        probes.append(
            {
                "id": f"{cid}-p{t_index + 1}",
                "conversation": cid,
                "case": case,
                "event": probe_id,
                "at": probe_event["order"],
                "query": probe_event["text"],
                "author": probe_event["author"],
                "related": related,
            }
        )
    return {"id": cid, "events": events, "probes": probes}


def build() -> dict[str, dict[str, Any]]:
    rng = random.Random(SEED)
    parts: dict[str, dict[str, Any]] = {}
    for part, parity in (("dev", 0), ("test", 1)):
        pools = {case: [t for i, t in enumerate(threads) if i % 2 == parity] for case, threads in CASES}
        for pool in pools.values():
            rng.shuffle(pool)
        count = min(len(p) for p in pools.values())
        conversations = []
        for n in range(count):
            chosen = [(case, pools[case][n]) for case, _ in CASES]
            number = n + 1 + (0 if part == "dev" else 100)
            conversations.append(_conversation(number, chosen, rng))
        parts[part] = {
            "part": part,
            "description": f"Labelled retrieval conversations, {part} part (see build.py).",
            "conversations": conversations,
        }
    return parts


def main() -> None:
    for part, body in build().items():
        path = HERE / f"{part}.json"
        path.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n")
        probes = sum(len(c["probes"]) for c in body["conversations"])
        sizes = [len(c["events"]) for c in body["conversations"]]
        print(f"{path.name}: {len(sizes)} conversations, {min(sizes)}-{max(sizes)} events, {probes} probes")


if __name__ == "__main__":
    main()
