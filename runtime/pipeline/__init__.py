"""Pipeline execution over torch.distributed: the driver that launches torchrun (driver) and the stage process (worker)."""
