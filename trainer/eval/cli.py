"""`wit eval zeroshot|retrieval|linear-probe|suite`: evaluate a trained CLIP (or random weights) on image datasets."""
from __future__ import annotations

import argparse

from wit.shards.options import DefaultsHelp, add_arguments, from_args

EPILOG = ("Prints a short table; --out writes the results as JSON. Examples:\n"
          "  wit eval zeroshot --data ../shared/data/cifar10/test.tar --prompts cifar10 --checkpoint ckpt.pt\n"
          "  wit eval retrieval --data flickr8k/images --captions flickr8k/captions.csv --checkpoint ckpt.pt\n"
          "  wit eval linear-probe --train cifar10/train.tar --test cifar10/test.tar --checkpoint ckpt.pt\n"
          "  wit eval suite --tasks datacomp --root ~/wds --checkpoint ckpt.pt --out eval_results.jsonl")


def register(sub) -> None:
    from wit.trainer.eval.linear_probe import LinearProbeConfig
    from wit.trainer.eval.retrieval import RetrievalConfig
    from wit.trainer.eval.suite import SuiteConfig
    from wit.trainer.eval.zeroshot import ZeroShotConfig

    p = sub.add_parser("eval", help="zero-shot, retrieval and linear-probe evaluation of a CLIP checkpoint",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)

    z = tasks.add_parser("zeroshot", formatter_class=DefaultsHelp,
                         help="zero-shot top-1/top-5 with prompt ensembles",
                         description="Zero-shot classification: every class name in every prompt template, "
                                     "embeddings averaged per class; top-1 and top-5 accuracy.")
    add_arguments(z, ZeroShotConfig)
    z.set_defaults(run=run_zeroshot)

    r = tasks.add_parser("retrieval", formatter_class=DefaultsHelp, help="image<->text recall@1/5/10",
                         description="Image-text retrieval: recall@1/5/10 image->text (a hit when any of the "
                                     "image's captions is in the top k) and text->image.")
    add_arguments(r, RetrievalConfig)
    r.set_defaults(run=run_retrieval)

    lp = tasks.add_parser("linear-probe", formatter_class=DefaultsHelp,
                          help="logistic regression on frozen features",
                          description="Linear probe: L-BFGS logistic regression on frozen image features; C "
                                      "chosen on a validation split of --train, refit on all of it, scored on --test.")
    add_arguments(lp, LinearProbeConfig)
    lp.set_defaults(run=run_linear_probe)

    s = tasks.add_parser("suite", formatter_class=DefaultsHelp, help="a task list (DataComp's form) in one run",
                         description="Zero-shot classification and retrieval over a task list in DataComp's "
                                     "tasklist.yml form, read from local copies (CLIP_benchmark's WebDataset "
                                     "layout, or wit's folder/tar/CSV forms); writes DataComp's eval_results.jsonl "
                                     "and prints a table with the average.")
    add_arguments(s, SuiteConfig)
    s.set_defaults(run=run_suite)


def run_zeroshot(args) -> int:
    from wit.trainer.eval.zeroshot import ZeroShotConfig, run
    run(from_args(ZeroShotConfig, args))
    return 0


def run_retrieval(args) -> int:
    from wit.trainer.eval.retrieval import RetrievalConfig, run
    run(from_args(RetrievalConfig, args))
    return 0


def run_linear_probe(args) -> int:
    from wit.trainer.eval.linear_probe import LinearProbeConfig, run
    run(from_args(LinearProbeConfig, args))
    return 0


def run_suite(args) -> int:
    from wit.trainer.eval.suite import SuiteConfig, run
    run(from_args(SuiteConfig, args))
    return 0
