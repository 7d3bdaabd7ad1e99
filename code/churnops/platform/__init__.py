"""The local platform behind ``churnops up``, its state under ``CHURNOPS_HOME``."""
