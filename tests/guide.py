"""The tracking guide's three queries (skill-tracking-events.txt), byte for byte, and its user.

Shared by the receiver, `/query` and CLI tests, which all run them verbatim.
"""

USER = "u_01jza857w4f23s1hf2s61befmw"

GUIDE_EVENTS_BY_CURRENCY = """SELECT
event,
properties->>'currency' AS currency,
COUNT(*) AS total
FROM altertable.analytics.events
GROUP BY ALL
ORDER BY total DESC;"""
GUIDE_USER_EVENTS = """SELECT
e.event,
e.properties,
e.timestamp,
e.identity_traits->>'email' AS email,
e.identity_traits->>'plan' AS plan
FROM altertable.analytics.events e
WHERE e.distinct_id = 'u_01jza857w4f23s1hf2s61befmw'
ORDER BY e.timestamp DESC;"""
GUIDE_IDENTITIES = """SELECT
distinct_id,
traits->>'email' AS email,
traits->>'plan' AS plan,
updated_at
FROM altertable.analytics.identities
ORDER BY updated_at DESC;"""
