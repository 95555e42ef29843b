// The status page's behaviour, on top of a page that is complete without it:
// every 10 s the parts marked data-live are swapped for those of a fresh `/`
// (no reload: the chart and its range stay), times are shown in local time,
// and the history chart (uPlot) draws /api/v1/query for the chosen series
// and range, with the min–max band and the average.
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
  var state = { key: null, range: "1h" };

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
        if (!state.key && chartEl && select && typeof uPlot !== "undefined") startChart();
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

  function setPressed() {
    if (!form) return;
    var buttons = form.querySelectorAll("button[name=range]");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].setAttribute("aria-pressed", buttons[i].value === state.range ? "true" : "false");
    }
  }

  function remember() {
    var q = "?series=" + encodeURIComponent(state.key) + "&range=" + state.range;
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

  function makePlot(answer, data) {
    var fmt = formatter(answer.unit);
    var win = { since: Date.parse(answer.since) / 1000, until: Date.parse(answer.until) / 1000 };
    var muted = cssVar("--muted"), line = cssVar("--line"), accent = cssVar("--accent");
    var axis = { stroke: muted, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } };
    var opts = {
      width: chartWidth(),
      height: CHART_HEIGHT,
      scales: {
        // The whole range asked for, even where there is no data yet.
        x: { time: true, range: function () { return [win.since, win.until]; } },
        y: {
          range: function (u, min, max) {
            if (min == null || max == null) return [0, 1];
            var lo = Math.min(0, min);
            var hi = max > lo ? max + (max - lo) * 0.08 : lo + 1;
            return [lo, hi];
          },
        },
      },
      series: [
        { value: function (u, v) { return v == null ? "–" : localTime(new Date(v * 1000), new Date()); } },
        { label: "min", stroke: cssVar("--band"), width: 1, value: function (u, v) { return v == null ? "–" : fmt(v); } },
        { label: "max", stroke: cssVar("--band"), width: 1, value: function (u, v) { return v == null ? "–" : fmt(v); } },
        { label: "avg", stroke: accent, width: 2, value: function (u, v) { return v == null ? "–" : fmt(v); },
          points: { size: 5, fill: accent } },
      ],
      bands: [{ series: [2, 1], fill: cssVar("--band") }],
      axes: [
        Object.assign({}, axis, { values: timeTicks }),
        Object.assign({}, axis, { size: 64, values: function (u, vals) { return vals.map(fmt); } }),
      ],
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
    };
    var p = new uPlot(opts, data, chartEl);
    p._win = win;
    return p;
  }

  function draw(answer) {
    var data = columns(answer);
    if (plot && plotUnit === answer.unit) {
      plot._win.since = Date.parse(answer.since) / 1000;
      plot._win.until = Date.parse(answer.until) / 1000;
      plot.setData(data);
    } else {
      if (plot) plot.destroy();
      chartEl.textContent = "";
      plot = makePlot(answer, data);
      plotUnit = answer.unit;
    }
    chartEl.setAttribute("data-points", String(answer.points.length));
    if (note) {
      note.textContent = answer.points.length + " points, " + stepText(answer.step_seconds) +
        " buckets · min–max band and average" +
        (answer.points.length === 0 ? " · no data in this range" : "");
    }
  }

  function stepText(s) {
    if (s >= 86400) return s / 86400 + " d";
    if (s >= 3600) return s / 3600 + " h";
    if (s >= 60) return s / 60 + " min";
    return s + " s";
  }

  function loadChart(quiet) {
    if (!chartEl || !state.key) return;
    var seq = ++loadSeq;
    if (!quiet && note) note.textContent = "Loading " + state.key + " over " + state.range + "…";
    var points = Math.min(1000, Math.max(100, Math.round(chartWidth())));
    var url = "/api/v1/query?key=" + encodeURIComponent(state.key) + "&since=" + state.range +
      "&max_points=" + points;
    fetch(url, { cache: "no-store" })
      .then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) throw new Error(body && body.error ? body.error : "HTTP " + r.status);
          return body;
        });
      })
      .then(function (answer) {
        if (seq === loadSeq) draw(answer);
      })
      .catch(function (e) {
        if (seq !== loadSeq || quiet) return;
        if (note) note.textContent = "Cannot load the chart: " + e.message;
      });
  }

  function choose(key, range) {
    if (key) state.key = key;
    if (range && RANGES.indexOf(range) >= 0) state.range = range;
    if (select && select.value !== state.key) select.value = state.key;
    setPressed();
    remember();
    loadChart(false);
  }

  function bindSparkLinks() {
    var links = document.querySelectorAll("a.sparklink[data-series]");
    for (var i = 0; i < links.length; i++) {
      links[i].addEventListener("click", function (e) {
        var key = this.getAttribute("data-series");
        if (!select || !key || !hasOption(key)) return;
        e.preventDefault();
        choose(key, "1h");
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
    if (state.key) return;
    ensureSeries().then(function (ok) {
      if (!ok || state.key) return;
      var q = new URLSearchParams(location.search);
      state.key = hasOption(q.get("series")) ? q.get("series") : select.value;
      state.range = RANGES.indexOf(q.get("range")) >= 0 ? q.get("range") : "1h";
      select.value = state.key;
      setPressed();
      loadChart(false);
    });
  }

  function init() {
    localizeTimes(document);
    bindSparkLinks();
    if (chartEl && select && typeof uPlot !== "undefined") {
      form.addEventListener("submit", function (e) {
        e.preventDefault();
        if (!state.key) return;
        var r = e.submitter && e.submitter.name === "range" ? e.submitter.value : state.range;
        choose(select.value, r);
      });
      select.addEventListener("change", function () { choose(select.value, null); });
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
