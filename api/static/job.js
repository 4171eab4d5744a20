// The job page: the loss history on a log-scale chart, then live checkpoints from the event stream,
// the latest preview as it changes, progress with speed and time left, and the cancel button.
(function () {
  "use strict";

  const { api, refreshLive, toast, formatNumber, formatDuration } = window.styleq;
  const FINISHED = ["succeeded", "failed", "canceled"];
  const PAGE = 1000; // the most checkpoints GET /checkpoints returns at once
  const RATE_WINDOW = 5; // checkpoints the speed is measured over

  let job = JSON.parse(document.getElementById("job-data").textContent);
  const links = job.links;
  const history = { iteration: [], elapsed: [], content: [], style: [], tv: [], total: [], scale: [] };
  const chartElement = document.getElementById("chart");
  const picture = document.getElementById("picture");
  let plot = null;
  let source = null;

  // --- the chart ----------------------------------------------------------------------------------

  function cssColor(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function positive(value) {
    return value > 0 ? value : null; // a log scale has no place for zero
  }

  function addPoints(points) {
    for (const point of points) {
      // A job resumed by another worker records its checkpoints again from its last saved state.
      while (history.iteration.length && history.iteration[history.iteration.length - 1] >= point.iteration) {
        for (const series of Object.values(history)) series.pop();
      }
      history.iteration.push(point.iteration);
      history.elapsed.push(point.elapsed_s);
      history.content.push(positive(point.content));
      history.style.push(positive(point.style));
      history.tv.push(positive(point.tv));
      history.total.push(positive(point.total));
      history.scale.push(point.scale ?? 1);
    }
  }

  // Coarse-to-fine: the iterations at which a new scale begins, each with its scale, for the chart's marks.
  function scaleStarts() {
    const starts = [];
    for (let index = 1; index < history.scale.length; index++) {
      if (history.scale[index] !== history.scale[index - 1]) starts.push([history.iteration[index - 1], history.scale[index]]);
    }
    if (history.scale.length && history.scale[0] < 1) starts.unshift([0, history.scale[0]]);
    return starts;
  }

  // A dashed line where each scale begins, labelled with the scale ("50% size").
  function drawScaleMarks(u) {
    const context = u.ctx;
    context.save();
    context.strokeStyle = "#98a2b3";
    context.fillStyle = "#475467";
    context.setLineDash([3, 3]);
    context.lineWidth = 1;
    context.font = `${Math.round(11 * devicePixelRatio)}px system-ui, sans-serif`;
    for (const [iteration, scale] of scaleStarts()) {
      const x = Math.round(u.valToPos(iteration, "x", true));
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
      context.beginPath();
      context.moveTo(x, u.bbox.top);
      context.lineTo(x, u.bbox.top + u.bbox.height);
      context.stroke();
      context.fillText(`${Math.round(scale * 100)}% size`, x + 4 * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio);
    }
    context.restore();
  }

  function chartSize() {
    return { width: Math.max(240, chartElement.clientWidth), height: chartElement.clientWidth < 500 ? 240 : 340 };
  }

  function axisValues(_plot, splits) {
    return splits.map((value) => (value === null ? "" : formatNumber(value)));
  }

  // Grid lines at the powers of ten only (and at 2 and 5 times them when the range is short): calmer than every digit.
  function logSplits(_plot, _axis, min, max) {
    const low = Math.floor(Math.log10(min));
    const high = Math.ceil(Math.log10(max));
    const steps = high - low > 2 ? [1] : [1, 2, 5];
    const splits = [];
    for (let power = low; power <= high; power++) {
      for (const step of steps) {
        const value = Number((step * 10 ** power).toPrecision(6));
        if (value >= min * 0.999 && value <= max * 1.001) splits.push(value);
      }
    }
    const every = Math.ceil(splits.length / 8);
    return splits.filter((_, index) => index % every === 0);
  }

  // With the cursor off the chart, the legend shows the latest values instead of blanks.
  function legendValue(plot, value, series, index) {
    if (index === null || index === undefined) {
      const values = plot.data[series];
      value = values.length ? values[values.length - 1] : null;
    }
    return series === 0 ? (value === null ? "—" : String(value)) : formatNumber(value);
  }

  function drawChart() {
    const data = [history.iteration, history.content, history.style, history.tv, history.total];
    chartElement.setAttribute("data-points", String(history.iteration.length));
    chartElement.setAttribute("data-scale-starts", scaleStarts().map(([iteration, scale]) => `${iteration}:${scale}`).join(" "));
    if (!history.iteration.length) return;
    if (plot) {
      plot.setData(data);
      return;
    }
    const waiting = document.getElementById("chart-waiting");
    if (waiting) waiting.remove();
    const grid = { stroke: "#eef0f3", width: 1 };
    const axis = { stroke: "#667085", grid, ticks: { stroke: "#e4e7ec", width: 1 }, font: "12px system-ui, sans-serif", labelFont: "12px system-ui, sans-serif" };
    const line = (label, color, width, dash) => ({ label, stroke: color, width, dash, points: { show: (_u, _series, first, last) => last - first < 1 }, value: legendValue });
    plot = new uPlot({
      ...chartSize(),
      scales: { x: { time: false }, y: { distr: 3, log: 10 } },
      axes: [
        { ...axis, label: "iteration", labelSize: 20 },
        { ...axis, label: "loss", labelSize: 20, size: 60, values: axisValues, splits: logSplits },
      ],
      series: [
        { label: "iteration", value: legendValue },
        line("content", cssColor("--series-content"), 2),
        line("style", cssColor("--series-style"), 2),
        line("TV", cssColor("--series-tv"), 2),
        line("total", cssColor("--series-total"), 2.5, [6, 4]),
      ],
      cursor: { points: { size: 7 } },
      legend: { live: true },
      hooks: { draw: [drawScaleMarks] },
    }, data, chartElement);
    new ResizeObserver(() => plot.setSize(chartSize())).observe(chartElement);
  }

  // --- progress, losses and the picture -----------------------------------------------------------

  function setField(name, text) {
    for (const element of document.querySelectorAll(`[data-field="${name}"]`)) element.textContent = text;
  }

  function speed() {
    const count = history.iteration.length;
    if (count < 2) return null;
    const first = Math.max(0, count - 1 - RATE_WINDOW);
    const iterations = history.iteration[count - 1] - history.iteration[first];
    const seconds = history.elapsed[count - 1] - history.elapsed[first];
    return iterations > 0 && seconds > 0 ? iterations / seconds : null;
  }

  function showProgress() {
    const count = history.iteration.length;
    const iteration = count ? history.iteration[count - 1] : job.iteration;
    const finished = FINISHED.includes(job.status);
    const fraction = job.status === "succeeded" ? 1 : Math.min(1, iteration / job.iterations);
    if (job.status === "running") setField("iteration", String(iteration));
    setField("percent", `${Math.floor(fraction * 100)}%`);
    const rate = speed();
    if (rate) setField("rate", rate.toFixed(1));
    setField("eta", rate && !finished && job.status === "running" ? formatDuration((job.iterations - iteration) / rate) : "—");
    const bar = document.querySelector("[data-live='progress'] .progress");
    if (bar) {
      bar.setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
      bar.firstElementChild.setAttribute("data-fill", (fraction * 100).toFixed(1));
      bar.firstElementChild.style.width = `${(fraction * 100).toFixed(1)}%`;
    }
    showRuntime();
    if (count) {
      setField("compute", formatDuration(history.elapsed[count - 1]));
      for (const name of ["content", "style", "tv", "total"]) {
        const element = document.querySelector(`[data-loss="${name}"]`);
        if (element) element.textContent = formatNumber(history[name][count - 1]);
      }
      document.getElementById("losses-at").textContent = `at iteration ${iteration}`;
    }
  }

  function showRuntime() {
    if (job.status !== "running" || !job.started_at) return;
    setField("runtime", formatDuration(Math.max(0, (Date.now() - Date.parse(job.started_at)) / 1000)));
  }

  let pictureTag = null;
  let pictureBusy = false;
  let pictureAgain = false;

  // Fetch the preview (or the result) again; the browser revalidates it with its ETag, so an unchanged picture costs a 304.
  async function refreshPicture() {
    if (pictureBusy) {
      pictureAgain = true;
      return;
    }
    pictureBusy = true;
    const isResult = job.status === "succeeded";
    try {
      const response = await fetch(isResult ? links.result : links.preview, { cache: "no-cache", credentials: "same-origin" });
      if (!response.ok) return;
      const tag = `${isResult}:${response.headers.get("ETag")}`;
      if (tag === pictureTag) return;
      pictureTag = tag;
      const url = URL.createObjectURL(await response.blob());
      const previous = picture.src;
      picture.onload = () => { if (previous.startsWith("blob:")) URL.revokeObjectURL(previous); };
      picture.src = url;
      picture.hidden = false;
      picture.alt = isResult ? `The result of job ${job.id.slice(0, 8)}` : `The latest preview of job ${job.id.slice(0, 8)}`;
      picture.setAttribute("data-version", String(Number(picture.getAttribute("data-version") || 0) + 1));
      const waiting = document.getElementById("picture-waiting");
      if (waiting) waiting.remove();
      const count = history.iteration.length;
      document.getElementById("picture-title").textContent = isResult ? "Result" : "Latest preview";
      document.getElementById("picture-note").textContent = isResult
        ? `${Array.isArray(job.params.size) ? job.params.size.join(" × ") : job.params.size} px`
        : (count ? `at iteration ${history.iteration[count - 1]}` : "");
    } catch (error) {
      // The next checkpoint tries again.
    } finally {
      pictureBusy = false;
      if (pictureAgain) {
        pictureAgain = false;
        refreshPicture();
      }
    }
  }

  function setLive(text, on) {
    document.getElementById("live-text").textContent = text;
    document.querySelector("#live .live-dot").classList.toggle("on", on);
  }

  // --- following the job --------------------------------------------------------------------------

  async function loadHistory() {
    let after = 0;
    for (;;) {
      const body = await api(`${links.checkpoints}?after=${after}&limit=${PAGE}`);
      addPoints(body.checkpoints);
      if (body.checkpoints.length < PAGE) return;
      after = body.checkpoints[body.checkpoints.length - 1].iteration;
    }
  }

  async function onStatus(next) {
    const changed = next.status !== job.status || next.cancel_requested !== job.cancel_requested || next.attempts !== job.attempts;
    job = next;
    if (changed) {
      await refreshLive();
      if (job.status === "succeeded") refreshPicture();
    }
    showProgress();
  }

  function follow() {
    const last = history.iteration.length ? history.iteration[history.iteration.length - 1] : 0;
    source = new EventSource(`${links.events}?after=${last}`);
    source.addEventListener("open", () => setLive("Live", true));
    source.addEventListener("status", (event) => onStatus(JSON.parse(event.data)));
    source.addEventListener("checkpoint", (event) => {
      addPoints([JSON.parse(event.data)]);
      drawChart();
      showProgress();
      refreshPicture();
    });
    source.addEventListener("end", async () => {
      source.close();
      source = null;
      setLive("Complete history", false);
      await refreshLive();
      showProgress();
      refreshPicture();
    });
    source.addEventListener("error", () => {
      // The browser reconnects by itself (resuming after the last checkpoint it saw) unless the server refused.
      if (source && source.readyState === EventSource.CLOSED) setLive("Live updates stopped; reload the page", false);
      else if (source) setLive("Reconnecting…", false);
    });
  }

  async function start() {
    try {
      await loadHistory();
    } catch (error) {
      setLive(`Could not load the history: ${error.message}`, false);
      return;
    }
    drawChart();
    if (!history.iteration.length) {
      const waiting = document.getElementById("chart-waiting");
      if (waiting) waiting.textContent = FINISHED.includes(job.status) ? "This job recorded no checkpoints." : "The chart starts at the first checkpoint.";
    }
    showProgress();
    if (job.status === "running" || job.status === "succeeded") refreshPicture();
    if (FINISHED.includes(job.status)) setLive("Complete history", false);
    else follow();
  }

  // After the page's live parts are patched, put back what only this script knows (speed, time left).
  document.addEventListener("styleq:refreshed", showProgress);

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-cancel]");
    if (!button) return;
    button.disabled = true;
    try {
      job = await api(links.cancel, { method: "POST" });
      toast(job.status === "canceled" ? "The job is canceled." : "The job stops at its next checkpoint.");
      await refreshLive();
      showProgress();
    } catch (error) {
      toast(`Could not cancel: ${error.message}`, true);
      button.disabled = false;
    }
  });

  setInterval(showRuntime, 1000);
  start();
})();
