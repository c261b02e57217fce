"""Running a job: device/dtype runtime, the batching runner, run_job, the journal, head fitting."""
