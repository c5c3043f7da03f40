"""pyslab's built-in workloads, installed as ``pyslab_plugins.workloads``.

One workload per module, each a :class:`pyslab.lab.Workload` registered under the entry-point group
``pyslab.workloads`` in ``pyproject.toml``, exactly as a third-party workload would be. Each is
deterministic by seed (see :mod:`pyslab.lab.workload` for the contract) and uses only pyslab's
public names.
"""
