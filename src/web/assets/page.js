// The status page's behaviour, on top of a page that is complete without it:
// every 10 s the parts marked data-live are swapped for those of a fresh `/`
// (no reload: the chart and its range stay), times are shown in local time,
// and the history chart (uPlot) draws /api/v1/query for up to four series
// over a preset or custom range (drag across it to zoom), one series as its
// min–max band and average, several as their averages.
(function () {
  "use strict";

  var REFRESH_MS = 10000;
  var RANGES = ["1h", "24h", "7d", "30d", "1y"];
  var CHART_HEIGHT = 240;

  var chartEl = document.getElementById("chart");
  var select = document.getElementById("series");
  var form = document.getElementById("chart-form");
  var note = document.getElementById("chart-note");
  var conn = document.getElementById("conn");
  var plot = null;
  var plotUnit = null;
  var loadSeq = 0;
  var state = { keys: [], range: "1h" };

  // ---- times ----------------------------------------------------------

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function localTime(d, now) {
    var hms = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    if (d.toDateString() === now.toDateString()) return hms;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + hms;
  }

  function localizeTimes(root) {
    var now = new Date();
    var list = root.querySelectorAll("time[datetime]");
    for (var i = 0; i < list.length; i++) {
      var t = list[i];
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) continue;
      t.title = t.getAttribute("datetime");
      t.textContent = localTime(d, now);
    }
  }

  // ---- live refresh ---------------------------------------------------

  function setStatus(head) {
    if (!head) return;
    if (head.dataset.title) document.title = head.dataset.title;
    var icon = document.getElementById("icon");
    var st = head.dataset.status;
    if (icon && st) {
      var href = icon.getAttribute("href").replace(/icon-[a-z]+\.svg/, "icon-" + st + ".svg");
      if (href !== icon.getAttribute("href")) icon.setAttribute("href", href);
    }
  }

  function showConn(text) {
    if (!conn) return;
    conn.hidden = !text;
    conn.textContent = text || "";
  }

  var failedSince = null;
  var refreshes = 0;

  function refresh() {
    if (document.hidden) return;
    fetch("/", { cache: "no-store", headers: { accept: "text/html" } })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var parts = document.querySelectorAll("[data-live]");
        for (var i = 0; i < parts.length; i++) {
          var fresh = doc.getElementById(parts[i].id);
          if (fresh) parts[i].replaceWith(document.importNode(fresh, true));
        }
        localizeTimes(document);
        bindSparkLinks();
        setStatus(document.getElementById("head"));
        failedSince = null;
        showConn("");
        refreshes++;
        document.body.setAttribute("data-refreshes", String(refreshes));
        if (state.keys.length === 0 && chartEl && select && typeof uPlot !== "undefined") startChart();
        else if (state.range === "1h" || state.range === "24h") loadChart(true);
      })
      .catch(function () {
        if (!failedSince) failedSince = new Date();
        showConn("Cannot reach the agent since " + localTime(failedSince, new Date()) +
          "; showing the last figures received. Retrying every 10 s.");
      });
  }

  // ---- chart ------------------------------------------------------------

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function fmtBytes(v) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    var i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v.toFixed(0) : Math.abs(v) < 100 ? v.toFixed(1) : v.toFixed(0)) + " " + units[i];
  }

  function fmtNum(v) {
    var a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return v.toFixed(2).replace(/\.?0+$/, "");
    return v.toPrecision(2);
  }

  function formatter(unit) {
    switch (unit) {
      case "ratio": return function (v) {
        return (v * 100).toFixed(v !== 0 && Math.abs(v) < 0.1 ? 1 : 0) + "%";
      };
      case "bytes": return fmtBytes;
      case "bytes_per_second": return function (v) { return fmtBytes(v) + "/s"; };
      case "per_second": return function (v) { return fmtNum(v) + "/s"; };
      case "seconds": return function (v) {
        var ms = v * 1000;
        return Math.abs(ms) < 1000 ? fmtNum(ms) + " ms" : fmtNum(v) + " s";
      };
      default: return fmtNum;
    }
  }

  // The chart shows 1 to MAX_SERIES series over a preset range ("1h") or
  // a custom one ({since, until} in seconds: from the inputs or a drag
  // across the chart). One series is drawn as its min–max band and
  // average; several as their averages, one y scale per unit (the first
  // two units get an axis, left and right).
  var MAX_SERIES = 4;

  function isCustom(range) { return typeof range === "object"; }

  function rangeParam(range) {
    if (!isCustom(range)) return range;
    return new Date(range.since * 1000).toISOString() + "/" + new Date(range.until * 1000).toISOString();
  }

  // `range` of the URL: a preset, or "FROM/UNTIL" as RFC 3339 times.
  function parseRange(text) {
    if (!text) return null;
    if (RANGES.indexOf(text) >= 0) return text;
    var parts = text.split("/");
    if (parts.length !== 2) return null;
    var since = Date.parse(parts[0]) / 1000, until = Date.parse(parts[1]) / 1000;
    if (isNaN(since) || isNaN(until) || until <= since) return null;
    return { since: since, until: until };
  }

  function setPressed() {
    if (!form) return;
    var buttons = form.querySelectorAll("button[name=range]");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].setAttribute("aria-pressed", buttons[i].value === state.range ? "true" : "false");
    }
    var from = document.getElementById("from"), to = document.getElementById("to");
    if (from && to && isCustom(state.range)) {
      from.value = inputTime(state.range.since);
      to.value = inputTime(state.range.until);
    }
  }

  // A time for a datetime-local input, in local time, to the minute.
  function inputTime(secs) {
    var d = new Date(secs * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + "T" +
      pad(d.getHours()) + ":" + pad(d.getMinutes());
  }

  // Series keys travel in one `series` parameter, one per line.
  function remember() {
    var q = "?series=" + encodeURIComponent(state.keys.join("\n")) +
      "&range=" + encodeURIComponent(rangeParam(state.range));
    history.replaceState(null, "", q + location.hash);
  }

  function chartWidth() {
    return Math.max(200, chartEl.clientWidth || 600);
  }

  // Rows for uPlot: [times, min, max, avg], with a null row where buckets
  // are missing so that the line breaks instead of bridging the gap.
  function columns(answer) {
    var step = answer.step_seconds;
    var t = [], lo = [], hi = [], avg = [];
    var prev = null;
    answer.points.forEach(function (p) {
      var ts = Date.parse(p.time) / 1000;
      if (prev !== null && ts - prev > step * 1.5) {
        t.push(prev + step); lo.push(null); hi.push(null); avg.push(null);
      }
      t.push(ts); lo.push(p.min); hi.push(p.max); avg.push(p.avg);
      prev = ts;
    });
    return [t, lo, hi, avg];
  }

  // 24-hour clock ticks; dates once the ticks are a day or more apart.
  function timeTicks(u, splits, axisIdx, space, incr) {
    var months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    return splits.map(function (ts, i) {
      var d = new Date(ts * 1000);
      var day = months[d.getMonth()] + " " + d.getDate();
      if (incr >= 28 * 86400) return months[d.getMonth()] + " " + d.getFullYear();
      if (incr >= 86400) return day;
      var hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
      if (incr < 60) hm += ":" + pad(d.getSeconds());
      var prev = i > 0 ? new Date(splits[i - 1] * 1000) : null;
      return !prev || prev.getDate() !== d.getDate() ? hm + "\n" + day : hm;
    });
  }

  function yRange(u, min, max) {
    if (min == null || max == null) return [0, 1];
    var lo = Math.min(0, min);
    var hi = max > lo ? max + (max - lo) * 0.08 : lo + 1;
    return [lo, hi];
  }

  // The options of a chart of `answers` (one per series).
  function plotOptions(answers, win) {
    var muted = cssVar("--muted"), line = cssVar("--line");
    var axis = { stroke: muted, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } };
    var colors = [cssVar("--accent"), cssVar("--warn") || "#b7791f", cssVar("--bad") || "#c53030", cssVar("--ok") || "#2f855a"];
    var scales = {
      // The whole range asked for, even where there is no data yet.
      x: { time: true, range: function () { return [win.since, win.until]; } },
    };
    var series = [{ value: function (u, v) { return v == null ? "–" : localTime(new Date(v * 1000), new Date()); } }];
    var axes = [Object.assign({}, axis, { values: timeTicks })];
    var units = [];
    var bands = [];
    var labelOf = function (v) { return function (u, x) { return x == null ? "–" : v(x); }; };
    if (answers.length === 1) {
      var a = answers[0], fmt = formatter(a.unit);
      scales.y = { range: yRange };
      series.push(
        { label: "min", stroke: cssVar("--band"), width: 1, value: labelOf(fmt) },
        { label: "max", stroke: cssVar("--band"), width: 1, value: labelOf(fmt) },
        { label: "avg", stroke: colors[0], width: 2, value: labelOf(fmt), points: { size: 5, fill: colors[0] } });
      bands.push({ series: [2, 1], fill: cssVar("--band") });
      axes.push(Object.assign({}, axis, { size: 64, values: function (u, vals) { return vals.map(fmt); } }));
    } else {
      answers.forEach(function (a, i) {
        var fmt = formatter(a.unit);
        var scale = "y_" + a.unit;
        if (units.indexOf(a.unit) < 0) {
          units.push(a.unit);
          scales[scale] = { range: yRange };
          if (units.length <= 2) {
            axes.push(Object.assign({}, axis, {
              scale: scale, size: 64, side: units.length === 1 ? 3 : 1,
              grid: { show: units.length === 1, stroke: line, width: 1 },
              values: function (u, vals) { return vals.map(fmt); },
            }));
          }
        }
        series.push({ label: a.key, scale: scale, stroke: colors[i % colors.length], width: 2,
          value: labelOf(fmt), points: { size: 4, fill: colors[i % colors.length] } });
      });
    }
    return {
      width: chartWidth(),
      height: CHART_HEIGHT,
      scales: scales,
      series: series,
      bands: bands,
      axes: axes,
      // A drag across the chart asks for that span (finer buckets), as a
      // custom range; the range buttons go back to a preset.
      cursor: { drag: { x: true, y: false, setScale: false } },
      hooks: { setSelect: [zoomTo] },
      legend: { live: true },
    };
  }

  function zoomTo(u) {
    var sel = u.select;
    if (!sel || sel.width < 5) return;
    var since = Math.floor(u.posToVal(sel.left, "x"));
    var until = Math.ceil(u.posToVal(sel.left + sel.width, "x"));
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    if (until - since < 60) until = since + 60;
    choose(null, { since: since, until: until });
  }

  // One table for uPlot from the answers: a single series keeps its band;
  // several are joined on their times, each by its average.
  function chartData(answers) {
    if (answers.length === 1) return columns(answers[0]);
    var tables = answers.map(function (a) {
      var c = columns(a);
      return [c[0], c[3]];
    });
    return uPlot.join(tables);
  }

  function draw(answers) {
    var shape = answers.map(function (a) { return a.key + "|" + a.unit; }).join(",");
    var first = answers[0];
    var since = Date.parse(first.since) / 1000, until = Date.parse(first.until) / 1000;
    var data = chartData(answers);
    if (plot && plotUnit === shape) {
      plot._win.since = since;
      plot._win.until = until;
      plot.setData(data);
    } else {
      if (plot) plot.destroy();
      chartEl.textContent = "";
      var win = { since: since, until: until };
      plot = new uPlot(plotOptions(answers, win), data, chartEl);
      plot._win = win;
      plotUnit = shape;
    }
    var points = answers.reduce(function (n, a) { return n + a.points.length; }, 0);
    chartEl.setAttribute("data-points", String(points));
    chartEl.setAttribute("data-series", state.keys.join("\n"));
    chartEl.setAttribute("data-since", first.since);
    chartEl.setAttribute("data-until", first.until);
    if (note) {
      note.textContent = points + " points, " + stepText(first.step_seconds) + " buckets · " +
        (answers.length === 1 ? "min–max band and average" : answers.length + " series, averages") +
        " · drag across the chart to zoom" + (points === 0 ? " · no data in this range" : "");
    }
    showChosen();
  }

  function stepText(s) {
    if (s >= 86400) return s / 86400 + " d";
    if (s >= 3600) return s / 3600 + " h";
    if (s >= 60) return s / 60 + " min";
    return s + " s";
  }

  function queryUrl(key) {
    var points = Math.min(1000, Math.max(100, Math.round(chartWidth())));
    var r = state.range;
    var span = isCustom(r)
      ? "&since=" + encodeURIComponent(new Date(r.since * 1000).toISOString()) +
        "&until=" + encodeURIComponent(new Date(r.until * 1000).toISOString())
      : "&since=" + r;
    return "/api/v1/query?key=" + encodeURIComponent(key) + span + "&max_points=" + points;
  }

  function fetchAnswer(key) {
    return fetch(queryUrl(key), { cache: "no-store" }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(key + ": " + (body && body.error ? body.error : "HTTP " + r.status));
        body.key = key;
        return body;
      });
    });
  }

  function loadChart(quiet) {
    if (!chartEl || state.keys.length === 0) return;
    var seq = ++loadSeq;
    if (!quiet && note) note.textContent = "Loading " + state.keys.join(", ") + "…";
    Promise.all(state.keys.map(fetchAnswer))
      .then(function (answers) {
        if (seq === loadSeq) draw(answers);
      })
      .catch(function (e) {
        if (seq !== loadSeq || quiet) return;
        if (note) note.textContent = "Cannot load the chart: " + e.message;
      });
  }

  // `keys`: the series to draw (null keeps them); `range`: a preset or
  // {since, until} (null keeps it).
  function choose(keys, range) {
    if (keys) {
      keys = keys.filter(hasOption);
      if (keys.length > 0) state.keys = keys.slice(0, MAX_SERIES);
    }
    if (range && (isCustom(range) || RANGES.indexOf(range) >= 0)) state.range = range;
    if (select && state.keys.length > 0 && select.value !== state.keys[0]) select.value = state.keys[0];
    setPressed();
    remember();
    loadChart(false);
  }

  // The series drawn, each with a button that takes it off the chart.
  function showChosen() {
    var list = document.getElementById("chosen");
    if (!list) return;
    list.textContent = "";
    state.keys.forEach(function (key) {
      var li = document.createElement("li");
      li.textContent = key;
      if (state.keys.length > 1) {
        var b = document.createElement("button");
        b.type = "button";
        b.textContent = "×";
        b.setAttribute("aria-label", "remove " + key);
        b.addEventListener("click", function () {
          choose(state.keys.filter(function (k) { return k !== key; }), null);
        });
        li.appendChild(b);
      }
      list.appendChild(li);
    });
    var add = document.getElementById("add-series");
    if (add) add.disabled = state.keys.length >= MAX_SERIES;
  }

  // A probe row's chart link opens that probe's series in the chart.
  function bindSparkLinks() {
    var links = document.querySelectorAll("a[data-series]");
    for (var i = 0; i < links.length; i++) {
      links[i].addEventListener("click", function (e) {
        var keys = this.getAttribute("data-series").split("\n").filter(hasOption);
        if (!select || keys.length === 0) return;
        e.preventDefault();
        choose(keys, "1h");
        document.getElementById("history").scrollIntoView({ behavior: "smooth", block: "start" });
      });
    }
  }

  function hasOption(key) {
    if (!select) return false;
    for (var i = 0; i < select.options.length; i++) {
      if (select.options[i].value === key) return true;
    }
    return false;
  }

  // Fills an empty series list (the page was rendered before history had
  // any) from the API; resolves whether there is a series to draw.
  function ensureSeries() {
    if (select.options.length > 0) return Promise.resolve(true);
    return fetch("/api/v1/series", { cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : { series: [] }; })
      .then(function (body) {
        if (select.options.length > 0) return true;
        var groups = {};
        body.series.forEach(function (s) {
          (groups[s.probe] = groups[s.probe] || []).push(s);
        });
        Object.keys(groups).sort().forEach(function (probe) {
          var g = document.createElement("optgroup");
          g.label = probe;
          groups[probe].forEach(function (s) {
            var o = document.createElement("option");
            o.value = s.key;
            o.textContent = s.key.slice(probe.length + 1);
            g.appendChild(o);
          });
          select.appendChild(g);
        });
        if (hasOption("host.cpu_used_ratio")) select.value = "host.cpu_used_ratio";
        return select.options.length > 0;
      })
      .catch(function () { return false; });
  }

  // Draws the series and range of the URL, else the page's choice.
  function startChart() {
    if (state.keys.length > 0) return;
    ensureSeries().then(function (ok) {
      if (!ok || state.keys.length > 0) return;
      var q = new URLSearchParams(location.search);
      var keys = (q.get("series") || "").split("\n").filter(hasOption).slice(0, MAX_SERIES);
      state.keys = keys.length > 0 ? keys : [select.value];
      state.range = parseRange(q.get("range")) || "1h";
      select.value = state.keys[0];
      setPressed();
      loadChart(false);
    });
  }

  function bindChartControls() {
    var extra = document.getElementById("chart-extra");
    if (extra) extra.hidden = false;
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      if (state.keys.length === 0) return;
      var r = e.submitter && e.submitter.name === "range" ? e.submitter.value : state.range;
      choose(null, r);
    });
    select.addEventListener("change", function () { choose([select.value], null); });
    var add = document.getElementById("add-series");
    if (add) {
      add.addEventListener("click", function () {
        if (state.keys.indexOf(select.value) >= 0) return;
        choose(state.keys.concat([select.value]), null);
      });
    }
    var apply = document.getElementById("apply-range");
    if (apply) {
      apply.addEventListener("click", function () {
        var from = Date.parse(document.getElementById("from").value) / 1000;
        var to = Date.parse(document.getElementById("to").value) / 1000;
        if (isNaN(from) || isNaN(to) || to <= from) {
          if (note) note.textContent = "A custom range needs a start before its end.";
          return;
        }
        choose(null, { since: from, until: to });
      });
    }
  }

  function init() {
    localizeTimes(document);
    bindSparkLinks();
    if (chartEl && select && typeof uPlot !== "undefined") {
      bindChartControls();
      if (typeof ResizeObserver !== "undefined") {
        var lastWidth = 0;
        // Resized on the next frame: resizing inside the observer's callback
        // would be another resize in the same frame (a loop error).
        new ResizeObserver(function () {
          requestAnimationFrame(function () {
            var w = chartWidth();
            if (plot && w !== lastWidth) {
              lastWidth = w;
              plot.setSize({ width: w, height: CHART_HEIGHT });
            }
          });
        }).observe(chartEl);
      }
      startChart();
    }
    setInterval(refresh, REFRESH_MS);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) refresh();
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
