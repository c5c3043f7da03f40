"""pyslab's built-in policy plugins, installed as ``pyslab_plugins``.

Each module holds one policy and imports nothing of pyslab but its public interface. They are
registered under the ``pyslab.policies`` entry-point group in ``pyproject.toml``, exactly as a
third-party plugin would be, and the core finds them only through that group.
"""
