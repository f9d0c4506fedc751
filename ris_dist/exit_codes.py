"""Process exit codes shared by the trainer and the launchers.

Torch-free, so the launchers (which must start without torch on a login node) and the trainer
read the same numbers.
"""

EXIT_OK = 0
EXIT_GATE_FAILED = 3
"""The phase ran to its end and its gate failed: its model is kept, a chain of phases stops."""
EXIT_REQUEUE = 75
"""A preemption signal arrived and every rank saved a checkpoint: requeue the job (EX_TEMPFAIL)."""
