"""Benchmark: time dense vs slimmed vs slice-sparse inference live, in a worker process, and keep the results."""

import streamlit as st

from dashboard import access, charts, data, state
from dashboard import benchmark_worker as bw

st.title("Live benchmark")
st.caption("Times each model on this server's CPU: dense (the decoded model as stored), slim (zero filters and "
           "channels removed), sparse (the LilNetX path, `zoo.load(name, slim=True)`: each convolution and linear "
           "layer runs the sparse kernel or PyTorch's dense op, and max pooling the kernel or PyTorch's, whichever "
           "measured faster here, and the whole model runs in the engine that measured fastest) and onnxruntime (the slimmed model in a dense runtime, for reference). One "
           "benchmark runs at a time per server, in its own process; results are stored in the catalog where this "
           "dashboard lets you write.")

frame = state.table()
if frame.empty:
    state.empty_catalog_help()
    st.stop()

job = st.session_state.get("bench_job")
names = frame["name"].tolist()
with st.form("bench_form", border=True):
    chosen = st.multiselect("Entries", names, default=names[:1], max_selections=4, key="bench_names")
    c1, c2, c3 = st.columns(3)
    batches = c1.multiselect("Batch sizes", [1, 8, 32, 128], default=[1, 32], key="bench_batches")
    threads = c2.multiselect("Threads", [1, 2, 4], default=[1], key="bench_threads")
    variants = c3.multiselect("Variants", list(bw.VARIANTS), default=list(bw.VARIANTS), key="bench_variants")
    runs = st.slider("Timed runs per setting", 5, 50, 10, key="bench_runs",
                     help="each run is one forward pass of one batch; the median and 90th percentile are shown")
    start = st.form_submit_button("Run benchmark", type="primary", icon=":material/play_arrow:",
                                  disabled=job is not None and not job.done)

if start:
    if not (chosen and batches and threads and variants):
        st.error("Choose at least one entry, batch size, thread count and variant.")
    else:
        options = {"batch_sizes": tuple(sorted(batches)), "threads": tuple(sorted(threads)),
                   "variants": tuple(v for v in bw.VARIANTS if v in variants), "warmup": 3, "runs": runs}
        store = access.may_write(st.session_state.get("upload_token"))
        st.session_state["bench_job"] = job = bw.BenchmarkJob(chosen, options, store=store)


@st.fragment(run_every=0.5 if job is not None and not job.done else None)
def progress_panel() -> None:
    """Polls the worker twice a second while it runs; reruns the page once when it finishes."""
    current = st.session_state.get("bench_job")
    if current is None:
        return
    was_done = current.done
    current.poll()
    if not current.done:
        left, right = st.columns([5, 1])
        left.progress(current.fraction, text=current.message)
        if right.button("Cancel", key="bench_cancel"):
            current.cancel()
            st.rerun()
    elif not was_done:
        state.refresh()
        st.rerun(scope="app")


progress_panel()

if job is not None and job.done:
    if job.error:
        st.error(f"**The benchmark did not finish.** {job.error}", icon=":material/error:")
    results = bw.results_frame(job.results)
    one = len(job.results) == 1
    entry_column = None if one else "Entry"  # one entry: named in the message above, its column hidden
    if not results.empty:
        kept = (f"{job.stored} result rows stored in the catalog." if job.store else
                "not stored: this dashboard is read-only for you (the Upload page takes its token).")
        st.success(f"Benchmarked {next(iter(job.results)) if one else f'{len(job.results)} entries'}; {kept}",
                   icon=":material/check_circle:")
        st.plotly_chart(charts.benchmark_bars(results), key="bench_chart")
        st.dataframe(results, hide_index=True, key="bench_results", placeholder=data.MISSING, column_config={
            "name": entry_column, "variant": "Variant", "batch": "Batch", "threads": "Threads",
            "median_ms": st.column_config.NumberColumn("Median (ms per batch)", format="%.3f"),
            "p90_ms": st.column_config.NumberColumn("p90 (ms)", format="%.3f"),
            "throughput_per_s": st.column_config.NumberColumn("Throughput (images/s)", format="%.0f"),
            "speedup_vs_dense": st.column_config.NumberColumn("Speed-up vs dense (×)", format="%.2f×")})
    for line in bw.skipped(job.results):
        st.caption(f":material/skip_next: skipped {line}")
    layers = bw.layers_frame(job.results)
    if not layers.empty:
        st.subheader("What the sparse variant ran")
        for line in bw.engines(job.results):
            st.caption(f":material/memory: Engine (fastest measured here: TorchScript, TorchScript with oneDNN "
                       f"layouts, or onnxruntime on the dense slimmed model, where the zeros do not pay) — {line}")
        st.caption("Per convolution, linear layer and setting: the form used (the sparse kernel only where it "
                   "measured faster than PyTorch's dense op on this CPU; *sparse-serial*: the kernel on one thread, "
                   "where that measured faster than splitting a small layer's work; *removed*: slimming took the "
                   "whole layer away) and the kernel's measured speed-up over dense. Zeros: the share of zero K×K slices of a "
                   "convolution, of zero weights of a linear (fc) layer.")
        st.dataframe(  # what a phone shows first: layer, form, zeros, speed-up
            layers.assign(zeros=100 * layers["zeros"]), hide_index=True, key="bench_layers",
            placeholder=data.MISSING,
            column_order=("name", "layer", "form", "zeros", "kernel_speedup", "kernel", "setting"), column_config={
                "name": entry_column, "layer": "Layer", "kernel": "Kernel", "setting": "Setting", "form": "Form",
                "zeros": st.column_config.ProgressColumn("Zeros", format="%.2f %%", min_value=0, max_value=100),
                "kernel_speedup": st.column_config.NumberColumn("Kernel vs dense (×)", format="%.2f×")})

st.header("Earlier results")
with state.friendly_errors("read earlier benchmark results"):
    from lilnetx.bench import machine_info
    from zoo.benchmarks import list_results, machine_name

    here = machine_name(machine_info())
    left, right = st.columns([3, 1])
    just_run = next(iter(job.results), None) if job is not None and job.done else None
    if just_run in names and st.session_state.get("bench_history_for") != just_run:
        st.session_state["bench_history_entry"] = st.session_state["bench_history_for"] = just_run
    entry = left.selectbox("Entry", names, key="bench_history_entry")
    only_here = right.toggle("This machine only", value=True, key="bench_history_here", help=here)
    rows = [r for r in list_results(state.zoo(), entry) if not only_here or r.get("machine") == here]
    history = bw.history_frame(rows)
    if history.empty:
        st.info(f"No benchmark of {entry} has been stored{' from this machine' if only_here else ''} yet.",
                icon=":material/history:")
    else:
        st.plotly_chart(charts.history_latency(history), key="bench_history_chart")
        with st.expander("All stored rows"):
            st.dataframe(history, hide_index=True, key="bench_history", placeholder=data.MISSING, column_config={
                "measured_at": st.column_config.DatetimeColumn("Measured (UTC)", format="YYYY-MM-DD HH:mm"),
                "variant": "Variant", "batch": "Batch", "threads": "Threads",
                "median_ms": st.column_config.NumberColumn("Median (ms per batch)", format="%.3f"),
                "p90_ms": st.column_config.NumberColumn("p90 (ms)", format="%.3f"), "machine": "Machine"})
