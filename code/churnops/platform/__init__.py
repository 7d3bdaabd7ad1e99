"""The local platform behind ``churnops up``: servers, the flow runner, the drop watchers.

Everything runs on loopback as child processes of ``churnops up`` and keeps its
state under ``CHURNOPS_HOME``, so a restart resumes where the last run stopped.
"""
