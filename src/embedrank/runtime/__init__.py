"""What every job shares: the output store and its lock, staging, shard commits, Ray start-up, the model
actor base, the crash guard, and the one job skeleton (job.py). Never imports torch at module level."""
