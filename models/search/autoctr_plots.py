"""Pictures of an AutoCTR search: the DAG (matplotlib only) and the best-so-far curve."""

from __future__ import annotations

import os

from models.autoctr_dag import sinks

COLOURS = {"sparse": "#9ecae1", "dense": "#9ecae1", "mlp": "#fdae6b", "fm": "#a1d99b",
           "dot": "#bcbddc", "logit": "#fc9272"}


def _plt():
    import matplotlib  # noqa: PLC0415 (plotting loads only when a report is written)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def dag_layout(dag: dict) -> dict[str, tuple[float, float]]:
    """Node -> (column, row): raw inputs in column 0, a block one column right of its deepest
    input, the logit right of everything; rows spread the nodes of a column."""
    column: dict[str, int] = {}
    raw = sorted({s for b in dag["blocks"] for s in b["inputs"] if isinstance(s, str)})
    for name in raw:
        column[name] = 0
    for index, block in enumerate(dag["blocks"]):
        column[str(index)] = 1 + max(column[str(s)] for s in block["inputs"])
    column["logit"] = 1 + max(column.values())
    positions = {}
    for col in set(column.values()):
        names = [n for n in column if column[n] == col]
        for row, name in enumerate(names):
            positions[name] = (float(col), row - (len(names) - 1) / 2.0)
    return positions


def _label(dag: dict, node: str) -> str:
    if not node.isdigit():
        return node
    block = dag["blocks"][int(node)]
    detail = {"mlp": lambda: "\n" + "-".join(map(str, block["units"])),
              "fm": lambda: "\n" + block.get("output", "scalar"), "dot": lambda: ""}
    return f"{node}: {block['type']}{detail[block['type']]()}"


def draw_dag(dag: dict, path: str, title: str) -> None:
    """Boxes for the raw inputs, the blocks (type and hyper-parameters) and the logit, arrows
    for the edges; the sinks feed the logit."""
    plt = _plt()
    positions = dag_layout(dag)
    edges = [(str(s), str(i)) for i, b in enumerate(dag["blocks"]) for s in b["inputs"]]
    edges += [(str(i), "logit") for i in sinks(dag)]
    width = 2.2 * (max(x for x, _ in positions.values()) + 1)
    height = 1.3 * (max(y for _, y in positions.values()) - min(
        y for _, y in positions.values()) + 2)
    fig, ax = plt.subplots(figsize=(max(5.0, width), max(3.0, height)))
    for source, target in edges:
        (x0, y0), (x1, y1) = positions[source], positions[target]
        bend = 0.08 + 0.1 * (x1 - x0 - 1)  # long edges bow out around the nodes between,
        bend = bend if y0 + y1 <= 0 else -bend  # away from the middle row
        ax.annotate("", xy=(x1 - 0.28, y1), xytext=(x0 + 0.28, y0),
                    arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 1.2,
                                "connectionstyle": f"arc3,rad={bend:.2f}"})
    for node, (x, y) in positions.items():
        kind = dag["blocks"][int(node)]["type"] if node.isdigit() else node
        ax.text(x, y, _label(dag, node), ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round,pad=0.4", "fc": COLOURS[kind], "ec": "#333333"})
    ax.text(positions["logit"][0], positions["logit"][1] - 0.45, "+ first-order (LR)",
            ha="center", va="top", fontsize=7, color="#555555")
    xs = [x for x, _ in positions.values()]
    ys = [y for _, y in positions.values()]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(min(ys) - 0.9, max(ys) + 0.7)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_best_so_far(history: list[dict], path: str) -> None:
    """Every trial's low-fidelity val AUC (by how it was chosen) and the best-so-far line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    markers = {"initial": ("D", "#756bb1"), "random": ("o", "#9ecae1"),
               "mutant": ("s", "#fdae6b"), "ranked": ("^", "#31a354")}
    for how, (marker, colour) in markers.items():
        chosen = [t for t in history if t["how"] == how]
        if chosen:
            ax.scatter([t["trial"] for t in chosen], [t["reward"] for t in chosen], s=18,
                       marker=marker, color=colour, label=f"{how} ({len(chosen)})")
    ax.step([t["trial"] for t in history], [t["best_so_far"] for t in history], where="post",
            color="#de2d26", label="best so far")
    rewards = sorted(t["reward"] for t in history)
    low = rewards[len(rewards) // 10]  # hide the worst tenth so the top is readable
    ax.set_ylim(low - 0.002, rewards[-1] + 0.002)
    ax.set_xlabel("trial")
    ax.set_ylabel("low-fidelity val AUC")
    ax.set_title(f"AutoCTR evolution: {len(history)} trials, best {rewards[-1]:.4f}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
