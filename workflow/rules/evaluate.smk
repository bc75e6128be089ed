# Evaluation: Table 2, M&V Table 1, Figure 7, grids and Figures 8, 10, 11, and how
# the runs went (training curves, M&V energy). In the report, one category per paper.


rule mean_image:
    input:
        lambda w: shard_paths(w.size, "train"),
    output:
        "results/eval/mean_image_{size}px.npy",
    log:
        "logs/mean_image/{size}px.log",
    benchmark:
        "benchmarks/mean_image/{size}px.tsv"
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline evaluate mean-image --shards {input} --out {output} > {log} 2>&1"


rule table2:
    input:
        images=lambda w: eval_shard_paths(rep_size("hog") if "hog" in REPS else image_sizes()[0]),
        mean=lambda w: f"results/eval/mean_image_{rep_size('hog') if 'hog' in REPS else image_sizes()[0]}px.npy",
        stores=lambda w: [p for paths in table2_rows().values() for p in paths],
        figures=lambda w: run_figures("table2"),
    output:
        csv=report(
            "results/table2.csv",
            caption="../report/table2.rst",
            category=DB2016,
            subcategory="Table 2",
            labels={"table": "Table 2, CSV"},
        ),
        md="results/table2.md",
        html=report(
            "results/table2.html",
            caption="../report/table2.rst",
            category=DB2016,
            subcategory="Table 2",
            labels={"table": "Table 2"},
        ),
    params:
        rows=lambda w: labelled_args("--row", table2_rows().items()),
        settings=as_json(caption_settings(network=False)),
    log:
        "logs/table2.log",
    benchmark:
        "benchmarks/table2.tsv"
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline evaluate table2 --settings {params.settings} --images {input.images}"
        " --mean-image {input.mean} {params.rows} --out {output.csv} --md {output.md} --html {output.html}"
        " > {log} 2>&1"


rule mv_table1:
    input:
        images=lambda w: eval_shard_paths(rep_size("hog")),
        stores=lambda w: [p for paths in mv_table1_rows().values() for p in paths],
        figures=lambda w: run_figures("mv_table1"),
    output:
        csv=report(
            "results/mv_table1.csv",
            caption="../report/mv_table1.rst",
            category=MV2015,
            subcategory="Table 1",
            labels={"table": "Table 1, CSV"},
        ),
        md="results/mv_table1.md",
        html=report(
            "results/mv_table1.html",
            caption="../report/mv_table1.rst",
            category=MV2015,
            subcategory="Table 1",
            labels={"table": "Table 1"},
        ),
    params:
        rows=lambda w: labelled_args("--row", mv_table1_rows().items()),
        settings=as_json(caption_settings(network=False, max_images=baseline_images())),
    log:
        "logs/mv_table1.log",
    benchmark:
        "benchmarks/mv_table1.tsv"
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline evaluate mv-table1 --settings {params.settings} --images {input.images} {params.rows}"
        " --out {output.csv} --md {output.md} --html {output.html} > {log} 2>&1"


rule figure7:
    input:
        images=lambda w: eval_shard_paths(net_size()),
        stores=lambda w: [p for paths in figure7_points().values() for p in paths],
        figures=lambda w: run_figures("figure7"),
    output:
        csv="results/figure7.csv",
        png=report(
            "results/figure7.png",
            caption="../report/figure7.rst",
            category=DB2016,
            subcategory="Figure 7",
            labels={"figure": f"Figure 7: error per layer of {network_label()}"},
        ),
    params:
        points=lambda w: labelled_args("--point", ((f"{c}:{l}", v) for (c, l), v in figure7_points().items())),
        settings=as_json(dict(caption_settings(), layers=config["network"]["layers"])),
    log:
        "logs/figure7.log",
    benchmark:
        "benchmarks/figure7.tsv"
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline evaluate figure7 --settings {params.settings} --images {input.images} {params.points}"
        " --out {output.csv} --png {output.png} > {log} 2>&1"


rule grid:
    input:
        images=lambda w: eval_shard_paths(rep_size("hog") if w.which == "shallow" else net_size()),
        stores=lambda w: [p for paths in grid_columns(w.which).values() for p in paths],
    output:
        report(
            "results/figures/grid_{which}.png",
            caption="../report/grid.rst",
            category=DB2016,
            subcategory="Reconstructions",
            labels=lambda w: {"figure": GRID_FIGURES[w.which]},
        ),
    wildcard_constraints:
        which="shallow|network",
    params:
        columns=lambda w: labelled_args("--column", grid_columns(w.which).items()),
        settings=lambda w: as_json(
            dict(caption_settings(network=w.which == "network"), **pick(config["evaluation"], count="grid_count"))
        ),
    log:
        "logs/grid/{which}.log",
    benchmark:
        "benchmarks/grid/{which}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline evaluate grid --settings {params.settings} --images {input.images} {params.columns}"
        " --out {output} > {log} 2>&1"


rule network_figure:
    input:
        images=lambda w: eval_shard_paths(net_size()),
        models=lambda w: [f"results/models/{net_rep(l)}/decoder.pt" for l in figure_layers(w.fig)],
    output:
        report(
            "results/figures/{fig}.png",
            caption="../report/network_figure.rst",
            category=DB2016,
            subcategory="Network studies",
            labels=lambda w: {"figure": NETWORK_FIGURES[w.fig]},
        ),
    wildcard_constraints:
        fig="fig8|fig10|fig11",
    params:
        models=lambda w: (
            f"--model results/models/{net_rep(figure_layers('fig8')[0])}"
            if w.fig == "fig8"
            else " ".join(f"--model {l}=results/models/{net_rep(l)}" for l in figure_layers(w.fig))
        ),
        settings=as_json(dict(caption_settings(stats=False), seed=config["seed"])),
    log:
        "logs/network_figure/{fig}.log",
    benchmark:
        "benchmarks/network_figure/{fig}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline evaluate {wildcards.fig} --settings {params.settings} --images {input.images}"
        " {params.models} --out {output} > {log} 2>&1"


rule training_curves:
    input:
        lambda w: list(training_runs(w.which).values()),
    output:
        report(
            "results/figures/training_curves_{which}.png",
            caption="../report/training_curves.rst",
            category=DB2016,
            subcategory="Training curves",
            labels=lambda w: {"decoders": TRAINING_SETS[w.which]},
        ),
    wildcard_constraints:
        which="shallow|network",
    params:
        runs=lambda w: labelled_args("--run", ((k, [v]) for k, v in training_runs(w.which).items())),
        settings=lambda w: as_json(caption_settings(stats=False, network=w.which == "network")),
    log:
        "logs/training_curves/{which}.log",
    benchmark:
        "benchmarks/training_curves/{which}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline evaluate training-curves --settings {params.settings} {params.runs} --out {output}"
        " > {log} 2>&1"


rule mv_energy:
    input:
        lambda w: [p for paths in mv_runs(w.which).values() for p in paths],
    output:
        report(
            "results/figures/mv_energy_{which}.png",
            caption="../report/mv_energy.rst",
            category=MV2015,
            subcategory="Energy",
            labels=lambda w: {"inversions": ENERGY_SETS[w.which]},
        ),
    wildcard_constraints:
        which="shallow|network",
    params:
        runs=lambda w: labelled_args("--run", mv_runs(w.which).items()),
        settings=lambda w: as_json(caption_settings(stats=False, network=w.which == "network")),
    log:
        "logs/mv_energy/{which}.log",
    benchmark:
        "benchmarks/mv_energy/{which}.tsv"
    conda:
        "../../envs/pipeline.yaml"
    shell:
        "python -m pipeline evaluate mv-energy --settings {params.settings} {params.runs} --out {output} > {log} 2>&1"
