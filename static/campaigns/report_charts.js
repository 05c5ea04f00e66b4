// Draws the report charts from the JSON the page embeds (json_script "report-charts"), with Chart.js.
(function () {
  "use strict";
  var source = document.getElementById("report-charts");
  if (!source || typeof Chart === "undefined") { return; }
  var data = JSON.parse(source.textContent);
  var palette = ["#417690", "#79aec8", "#f5dd5d", "#e07a5f", "#3d9970", "#8e6c8a"];

  function draw(id, config) {
    var canvas = document.getElementById(id);
    if (canvas) { new Chart(canvas, config); }
  }

  if (data.daily) {
    var series = [["sent", "Sent"], ["opens", "Opens (people)"], ["clicks", "Clicks (people)"],
                  ["accepts", "Acceptances"], ["conversions", "Conversions"]];
    draw("chart-daily", {
      type: "line",
      data: {
        labels: data.daily.days,
        datasets: series.map(function (s, i) {
          return {label: s[1], data: data.daily[s[0]], borderColor: palette[i], backgroundColor: palette[i], tension: 0.2};
        })
      },
      options: {responsive: true, maintainAspectRatio: false, interaction: {mode: "index", intersect: false}}
    });
  }
  if (data.funnel) {
    draw("chart-funnel", {
      type: "bar",
      data: {labels: data.funnel.labels, datasets: [{label: "Messages", data: data.funnel.values, backgroundColor: palette[0]}]},
      options: {indexAxis: "y", responsive: true, maintainAspectRatio: false, plugins: {legend: {display: false}}}
    });
  }
  if (data.products && data.products.labels.length) {
    draw("chart-products", {
      type: "bar",
      data: {
        labels: data.products.labels,
        datasets: [
          {label: "Acceptances", data: data.products.accepted, backgroundColor: palette[0], xAxisID: "x"},
          {label: "Revenue", data: data.products.revenue, backgroundColor: palette[3], xAxisID: "x2"}
        ]
      },
      options: {indexAxis: "y", responsive: true, maintainAspectRatio: false,
                scales: {
                  // Two measures on two axes: each says which it is, or 0–3 and 0–140 read as one scale.
                  x: {position: "bottom", beginAtZero: true, title: {display: true, text: "Acceptances"}},
                  x2: {position: "top", beginAtZero: true, grid: {drawOnChartArea: false},
                       title: {display: true, text: "Revenue"}}}}
    });
  }
})();
