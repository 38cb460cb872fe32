"""``featstore demo``: the main job end to end on built-in defaults (see featstore.demo)."""

from __future__ import annotations


def add_demo_command(sub) -> None:
    """Add ``demo`` to the ``featstore`` parser's subcommands."""
    d = sub.add_parser(
        "demo",
        help="the main job: synthetic dataset, tiny random-init encoders, extraction, probes",
        description="Run the main job end to end into --out: the synthetic dataset, tiny random-init DINOv2, "
        "CLIP and Qwen2-VL encoders (or real checkpoints), extraction of every layer, probes, a table and a plot.",
    )
    d.add_argument("--out", default="datasets/demo", help="folder to (re)create (default: %(default)s)")
    d.add_argument("--rows", type=int, default=4000, help="rows of the synthetic dataset (default: %(default)s)")
    d.add_argument(
        "--seed", type=int, default=0, help="seeds the dataset, the split and the probes (default: %(default)s)"
    )
    for enc in ("dinov2", "clip", "qwen"):
        d.add_argument(
            f"--{enc}",
            default=None,
            metavar="MODEL",
            help=f"a real {enc} checkpoint (hub id or folder) instead of the tiny random-init one (default: tiny)",
        )
    d.add_argument("--encoders", default="dinov2,clip,qwen", help="which encoders run (default: %(default)s)")
    d.add_argument("--layers", default="all", help="layers to extract from each encoder (default: %(default)s)")
    d.add_argument("--task", default="relation", help="probe task (default: %(default)s)")
    d.add_argument("--epochs", type=int, default=10, help="probe epochs (default: %(default)s)")
    d.add_argument(
        "--head",
        default="linear",
        help="probe heads, any of linear,ridge,logistic,attentive,mlp (default: %(default)s)",
    )
    d.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    d.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from ..demo import run_demo

    models = {enc: getattr(args, enc) for enc in ("dinov2", "clip", "qwen") if getattr(args, enc)}
    run_demo(
        args.out,
        n_rows=args.rows,
        seed=args.seed,
        models=models,
        layers=args.layers,
        task=args.task,
        epochs=args.epochs,
        device=args.device,
        encoders=args.encoders.split(","),
        heads=args.head,
    )
    return 0
