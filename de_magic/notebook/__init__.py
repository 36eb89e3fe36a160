"""The notebook layer: magics, call forms, live progress bars and mirrored remote widgets.

Importing it plugs its UI into the caller layer (which knows none): widget
progress bars for calls made in a kernel, ipywidgets call forms for
``proxy.method.ui()``, and mirrors of widgets that remote cells display; in
IPython, de-magic's errors and interrupts then show as one line.
``%load_ext de_magic`` imports it, and so does ``import de_magic`` inside a kernel.
"""

from IPython import get_ipython

from . import displays, magics, mirror, progress

progress.register()
mirror.register()
displays.register()
if get_ipython() is not None:
    magics.show_errors_short(get_ipython())
