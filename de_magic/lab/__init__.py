"""The JupyterLab layer: the server extension behind the Remote backends sidebar.

:mod:`.server` serves the sidebar's REST endpoints; :mod:`.brokerpool` keeps a
bounded set of broker connections for it.  The sidebar itself is the
TypeScript extension in ``labextension/``.
"""
