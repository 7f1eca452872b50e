"""A trained policy served to people, with their feedback recorded in the store (`rlhf serve policy`).

`policy_server`: the OpenAI-compatible app; `backends`: a local checkpoint or an upstream server;
`recorder`: the group-commit writer; `limits`: the defaults the CLI shows (no heavy imports).
"""
