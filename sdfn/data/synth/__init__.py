"""The deterministic synthetic garment catalog, written in FashionIQ's on-disk format.

`generate_catalog` samples families of near-duplicate garments (a base item and siblings that differ in
one or two attributes), pairs items inside each family into triplets with two FashionIQ-style relative
captions, draws every item with PIL and writes the FashionIQ layout plus `catalog.csv`. Families put hard
negatives in every gallery: siblings share most attributes with the reference, so image similarity alone
cannot find the target and the caption has to be read. Everything random is drawn in the main process
from the seed, and each image from its own seed, so the files are byte-identical for a seed whatever the
number of drawing processes.

One module per step, in the order they run:

    sampling   items: families, splits, ids
    captions   the caption grammar: two relative captions for a pair and what they ask for
    triplets   pairs inside a family, as the readers' `Triplet`
    drawing    one garment as a 224x224 image
    writers    the files: images, split and caption JSON, catalog.csv
    generate   `generate_catalog`: checks, a staging folder, publishing it whole
"""

from sdfn.data.synth.captions import caption_pair, mention_change
from sdfn.data.synth.drawing import IMAGE_SIZE, item_rng, render_item
from sdfn.data.synth.generate import CatalogSummary, generate_catalog
from sdfn.data.synth.sampling import (
    DEFAULT_ITEMS_PER_CATEGORY,
    MIN_ITEMS_PER_CATEGORY,
    SPLITS,
    Item,
    changed_attributes,
    sample_items,
    split_sizes,
)
from sdfn.data.synth.triplets import sample_triplets
from sdfn.data.synth.writers import CATALOG_COLUMNS, item_title

__all__ = [
    "CATALOG_COLUMNS",
    "DEFAULT_ITEMS_PER_CATEGORY",
    "IMAGE_SIZE",
    "MIN_ITEMS_PER_CATEGORY",
    "SPLITS",
    "CatalogSummary",
    "Item",
    "caption_pair",
    "changed_attributes",
    "generate_catalog",
    "item_rng",
    "item_title",
    "mention_change",
    "render_item",
    "sample_items",
    "sample_triplets",
    "split_sizes",
]
