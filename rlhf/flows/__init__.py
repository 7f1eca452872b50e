"""Prefect flows around dvc.yaml's stages.

A flow started without PREFECT_API_URL runs on Prefect's temporary (ephemeral) server, which gets
20 s to start by default. A fresh PREFECT_HOME migrates its database first, and on a busy 2-core
machine that took longer: the flow then failed before its first stage with "Timed out while
attempting to connect to ephemeral Prefect API server" (seen in the test suite, 2026-12-01).
Importing any flow raises that limit to 120 s unless the user has set it.
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
