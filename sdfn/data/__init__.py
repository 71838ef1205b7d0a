"""Data: the synthetic catalog generator and readers for FashionIQ, Shoes and Fashion200k.

Importing the package registers every reader (`@register_dataset` in each reader module), so
`sdfn.data.base.open_dataset` knows them all; a new reader is one module with the decorator, imported here.
"""

from sdfn.data import fashion200k, fashioniq, shoes  # noqa: F401  (registers the readers)
