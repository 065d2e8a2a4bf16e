"""nbval settings for the notebooks: besides images and widgets (skipped by nbval itself), do not
compare HTML outputs (tables rendered by pandas also carry a text/plain copy, which is compared)."""

import nbval.plugin

_init = nbval.plugin.IPyNbFile.__init__


def _init_skipping_html(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.skip_compare = self.skip_compare + ("text/html",)


nbval.plugin.IPyNbFile.__init__ = _init_skipping_html
