"""`python tools/make_shards.py SRC OUT`: WebDataset shards from an image folder, ImageNet's
training archive or other shards (pretrain/data/shards.py), for file systems that keep few
large files better than 1.28 million small ones."""

import argparse

from ssl2det.errors import one_line_errors

from .data.shards import write_shards


@one_line_errors(after_interrupt="the shards written so far are whole; the same command "
                 "continues with the next one")
def main(argv=None, description=__doc__) -> int:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="an image folder (ROOT/<class>/<image>.jpg), ImageNet's "
                        "ILSVRC2012_img_train.tar, or shards (DIR/NAME-{000000..000146}.tar)")
    parser.add_argument("out", help="the folder the shards go to (NAME-000000.tar, ...)")
    parser.add_argument("--images-per-shard", type=int, default=1000,
                        help="images per shard (1000: ImageNet's training set in 1,282 shards "
                        "of about 110 MB)")
    parser.add_argument("--name", default="shard", help="the shards' file name prefix")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    pattern = write_shards(args.source, args.out, args.images_per_shard, args.name,
                           progress=not args.no_progress)
    print(f"wrote {pattern}; pretrain from it with DATA.ROOT '{pattern}'")
    return 0
