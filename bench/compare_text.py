"""The sentences `bench compare` says about a comparison (bench.compare.Comparison.summary_lines), each with the
rule it states."""

ONE_RUN_CAVEAT = ("one run per side: run-to-run variation is not measured, so a faster/slower can be a run-level "
                  "offset; rerun both sides (bench run --out BASE/r1, BASE/r2, BASE/r3, and NEW/r1, ...) and compare "
                  "the folders of runs for a verdict that accounts for it")
CONTENDED_HEAD = ("contended ({}): other load disturbed these timings, so they are not judged (--fail-on-regression "
                  "fails on those its test called slower from several runs a side, significant over the timings "
                  "judged; --allow-contended judges them):")
UNJUDGED_SLOWER = ("of them, {} looked slower from several runs a side: --fail-on-regression fails on them, since a "
                   "disturbed run cannot show that nothing regressed; rerun on a quiet machine (bench doctor), or "
                   "pass --allow-contended")
NOT_SIGNIFICANT = ("slower, but not significant over the timings judged: {}; --fail-on-regression does not fail on "
                   "them (Holm over the {} timings judged from several runs a side, family-wise alpha {:g}, their "
                   "run-to-run spreads moderated across them: bench.stats.family_p)")
ONE_RUN_GATE = ("one run a side: --fail-on-regression judges the exact metrics (bytes, FLOPs, quality) only; a "
                "timing is shown, not gated")
NEW_CONTENDED = "{} of NEW's {} timings were contended in every new run, so not judged"
NEW_DISTURBED = (": NEW was disturbed, and --fail-on-regression fails on it as on an unfinished run (it measured the "
                 "load, not the code); rerun it on a quiet machine (bench doctor), or pass --allow-contended")
NOTHING_SHARED = ("nothing compared: no case of NEW is in BASE (no shared case_id: other suites, sizes or params); "
                  "--fail-on-regression fails")
CONTENDED_ALLOWED = "contended ({}), judged all the same (--allow-contended):"
ONE_RUN_UNGATED = ("slower timings from one run a side ({}): --fail-on-regression does not fail on them (one run "
                   "cannot tell a change from a run-level offset); rerun both sides, 3 runs each, for a verdict that "
                   "gates")
VARIES_HEAD = ("varying ({}): exact metrics (bytes, FLOPs, a seeded quality) whose runs of one side differ, weighed "
               "on their run-to-run spread, or that come from other trained weights on each side, held to the "
               "threshold:")
ONE_SIDE = ("metrics on one side only, not compared ({}): {} (null or not recorded on the other side: a ratio whose "
            "reference case that run lacks, telemetry absent there, a metric of another techbench version)")
