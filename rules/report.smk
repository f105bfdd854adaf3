# Figures for `snakemake --report`: what each method scored and selected (the tables and the
# ablation scatter come from the method rules, marked for the report where they are made).


# Score histograms, selection overlap (Jaccard), per-domain composition, training curves of the
# spine's models, and MATES's reference loss per stage.
rule report_plots:
    input:
        examples=EXAMPLES,
        files=report_plot_files,
    output:
        overlap=report(
            "results/{run}/report/overlap.png",
            caption="../report/overlap.rst",
            category="Selections",
        ),
        overlap_table="results/{run}/report/overlap.tsv",
        composition=report(
            "results/{run}/report/composition.png",
            caption="../report/composition.rst",
            category="Selections",
        ),
        composition_table="results/{run}/report/composition.tsv",
        curves=report(
            "results/{run}/report/curves.png",
            caption="../report/curves.rst",
            category="Training",
        ),
        extra=[
            report(
                f"results/{{run}}/report/{name}",
                caption=f"../report/{name.removesuffix('.png')}.rst",
                category=category,
            )
            for name, category in (
                ("scores.png", "Scores"),
                ("mates_stages.png", "MATES"),
            )
            if f"results/{RUN}/report/{name}" in report_targets()
        ],
    log:
        logs("report_plots.log"),
    conda:
        ENV
    params:
        args=report_plot_args,
        out_dir=lambda wildcards, output: str(Path(output.overlap).parent),
        code=script_code("report_plots.py", "report plots"),
    script:
        "../workflow/scripts/report_plots.py"
