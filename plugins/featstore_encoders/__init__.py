"""featstore's built-in encoder plugins (DINOv2, CLIP, the Qwen2-VL / Qwen2.5-VL vision tower), shipped in featstore's wheel as the top-level
package ``featstore_encoders``.

They are written exactly like third-party plugins: each module implements the hook
``register_encoders`` with featstore's public API (:mod:`featstore.encoders`, :mod:`featstore.hookspecs`)
plus ``transformers`` and pillow, and featstore registers them by module path
(``featstore.plugins.BUILTIN_PLUGINS``). ``transformers`` is imported only when a model is loaded.
"""

from ._hf import load_checked, load_image_processor, patch_grid

__all__ = ["load_checked", "load_image_processor", "patch_grid"]
