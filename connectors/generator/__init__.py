"""Synthetic shop traffic: a pure, seeded model of a shop (``shop``) and the I/O that replays it (``send``).

The pipeline's processors (attribution, carts, remarketing, CRM crossing) only
show what they do on traffic that looks like a real shop's: several sources,
campaigns declared and forgotten, carts abandoned, customers who log in and
come back. The model is deterministic so a run can be reproduced from its seed.
"""
