"""`wit eval zeroshot|retrieval|linear-probe`: evaluate a trained CLIP (or random weights) on image datasets."""
from __future__ import annotations

import argparse

from wit.shards.helptext import DefaultsHelp
from wit.trainer.eval.common import add_model_arguments, options_of

DATA_HELP = ("labelled images: a folder of <class>/<image>, a tar of such folders (e.g. cifar10/test.tar), or "
             "WebDataset shards with a class (.cls member or a .json field), brace patterns allowed")
EPILOG = ("Prints a short table; --out writes the results as JSON. Examples:\n"
          "  wit eval zeroshot --data ../shared/data/cifar10/test.tar --prompts cifar10 --checkpoint ckpt.pt\n"
          "  wit eval retrieval --data flickr8k/images --captions flickr8k/captions.csv --checkpoint ckpt.pt\n"
          "  wit eval linear-probe --train cifar10/train.tar --test cifar10/test.tar --checkpoint ckpt.pt")


def register(sub) -> None:
    p = sub.add_parser("eval", help="zero-shot, retrieval and linear-probe evaluation of a CLIP checkpoint",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    fmt = DefaultsHelp

    z = tasks.add_parser("zeroshot", formatter_class=fmt, help="zero-shot top-1/top-5 with prompt ensembles",
                         description="Zero-shot classification: every class name in every prompt template, "
                                     "embeddings averaged per class; top-1 and top-5 accuracy.")
    z.add_argument("--data", required=True, help=DATA_HELP)
    z.add_argument("--prompts", default="cifar10", choices=("cifar10", "cifar100", "imagenet", "folders"),
                   help="class names + templates: the CLIP paper's sets, or 'folders' (the dataset's folder "
                        "names with the 18 CIFAR templates)")
    add_labelled_arguments(z)
    z.add_argument("--limit", type=int, default=0, help="at most this many images (0: all); from folders and tars "
                        "spread evenly over the classes, from shards the first ones")
    add_model_arguments(z)
    z.set_defaults(run=run_zeroshot)

    r = tasks.add_parser("retrieval", formatter_class=fmt, help="image<->text recall@1/5/10",
                         description="Image-text retrieval: recall@1/5/10 image->text (a hit when any of the "
                                     "image's captions is in the top k) and text->image.")
    r.add_argument("--data", required=True, help="a folder of images (with --captions), or WebDataset shards of "
                                                  ".jpg + .txt samples, brace patterns allowed")
    r.add_argument("--captions", help="CSV with columns image,caption (several rows per image allowed); image "
                                      "names are relative to --data")
    r.add_argument("--limit", type=int, default=0, help="at most this many images, with all their captions (0: all)")
    add_model_arguments(r)
    r.set_defaults(run=run_retrieval)

    lp = tasks.add_parser("linear-probe", formatter_class=fmt, help="logistic regression on frozen features",
                          description="Linear probe: L-BFGS logistic regression on frozen image features; C "
                                      "chosen on a validation split of --train, refit on all of it, scored on --test.")
    lp.add_argument("--train", required=True, help="training images; " + DATA_HELP)
    lp.add_argument("--test", required=True, help="test images, same forms as --train")
    add_labelled_arguments(lp)
    lp.add_argument("--limit-train", type=int, default=0, help="at most this many training images (0: all)")
    lp.add_argument("--limit-test", type=int, default=0, help="at most this many test images (0: all)")
    lp.add_argument("--val-fraction", type=float, default=0.2, help="share of --train held out to choose C")
    lp.add_argument("--c-min", type=float, default=1e-6, help="smallest C (inverse L2 strength) in the sweep")
    lp.add_argument("--c-max", type=float, default=1e6, help="largest C in the sweep")
    lp.add_argument("--c-steps", type=int, default=13, help="log-spaced C values from --c-min to --c-max")
    lp.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations per fit")
    lp.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    add_model_arguments(lp)
    lp.set_defaults(run=run_linear_probe)


def add_labelled_arguments(p) -> None:
    p.add_argument("--format", default="auto", choices=("auto", "folder", "tar", "shards"),
                   help="how the images are stored; auto looks at the path and the tar's members")
    p.add_argument("--class-field", default="label", help="in shards without .cls members: the .json field "
                                                          "holding the class (an index or a name)")


def run_zeroshot(args) -> int:
    from wit.trainer.eval.zeroshot import ZeroShotConfig, run
    run(options_of(ZeroShotConfig, args))
    return 0


def run_retrieval(args) -> int:
    from wit.trainer.eval.retrieval import RetrievalConfig, run
    run(options_of(RetrievalConfig, args))
    return 0


def run_linear_probe(args) -> int:
    from wit.trainer.eval.linear_probe import LinearProbeConfig, run
    run(options_of(LinearProbeConfig, args))
    return 0
