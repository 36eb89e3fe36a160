"""The notebook layer: magics, call forms, live progress bars and mirrored remote widgets.

Importing it plugs its UI into the caller layer (which knows none): widget
progress bars for calls made in a kernel, ipywidgets call forms for
``proxy.method.ui()``, and mirrors of widgets that remote cells display.
``%load_ext de_magic`` imports it, and so does ``import de_magic`` inside a kernel.
"""

from . import displays, mirror, progress

progress.register()
mirror.register()
displays.register()
