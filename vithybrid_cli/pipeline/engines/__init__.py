"""Engines that run a job elsewhere than in this process (run_job is the local engine)."""
