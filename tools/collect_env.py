#!/usr/bin/env python
"""Print the environment report: torch / torchvision / detectron2 versions, whether detectron2 is
the compiled or the fallback build, and the devices seen.

    python tools/collect_env.py            # this project's report
    python tools/collect_env.py --detectron2   # also detectron2's own, longer report
"""

import argparse

from ssl2det.environment import collect_env, format_table

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectron2", action="store_true",
                        help="also print detectron2.utils.collect_env's report")
    args = parser.parse_args()
    print(format_table(collect_env()))
    if args.detectron2:
        from detectron2.utils.collect_env import collect_env_info

        print(collect_env_info())
