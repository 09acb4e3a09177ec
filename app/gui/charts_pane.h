// SPDX-License-Identifier: MIT
#pragma once

#include "master/metrics.h"

#include <QElapsedTimer>
#include <QWidget>

#include <functional>
#include <map>
#include <vector>

class QCheckBox;
class QCustomPlot;
class QCPBars;
class QCPGraph;
class QCPItemStraightLine;
class QHBoxLayout;
class QScrollArea;
class QTimer;

namespace together::gui {

// The Charts pane, live while generating: tokens/s over time with each reply's time to first token; each
// pipeline link's and each tensor-parallel group's all-reduce latency per token with p50/p95 lines; and the
// time of each token stacked into compute, all-reduce, links and the rest, with the cost model's prediction.
// Points are appended as step records arrive; the plots are redrawn on a timer over a rolling window, and
// Pause freezes the axes (not the data). QCustomPlot is included only in the .cpp (a large header).
class ChartsPane : public QWidget {
    Q_OBJECT
public:
    explicit ChartsPane(QWidget* parent = nullptr);
    ~ChartsPane() override;

    void addStep(const StepRecord& step);          // decode steps (step > 0); the prefill is skipped
    void addTimeToFirstToken(double ms);            // one per reply
    void setPrediction(double msPerToken);          // <= 0: none
    void clear();
    // The timeline of the session's steps (one row per rank, compute vs communication) as Chrome trace JSON,
    // from `trace` (the controller's). Returns "" or why it could not be written.
    // `trace(n)`: the last n steps (0: all) as Chrome trace JSON. The in-app timeline draws the last few from it.
    void setTraceSource(std::function<std::string(size_t lastSteps)> trace) { m_trace = std::move(trace); }
    QString exportTimeline(const QString& path) const;
    // The four charts as PNG files: PREFIX-tokens.png, PREFIX-links.png, PREFIX-time-per-token.png, PREFIX-timeline.png.
    QString saveCharts(const QString& prefix);

    // For tests and exports.
    size_t pointCount() const { return m_points; }
    std::vector<std::string> seriesNames() const;   // the link and all-reduce series, in order of appearance
    QCustomPlot* tokensPlot() { return m_tokens; }
    QCustomPlot* linksPlot() { return m_links; }
    QCustomPlot* stackPlot() { return m_stack; }
    QCustomPlot* timelinePlot() { return m_timeline; }
    // The timeline's rows (one per rank, as the trace names them) and spans drawn at the last refresh.
    QStringList timelineRows() const { return m_timelineRows; }
    int timelineSpans() const { return m_timelineSpans; }
    void refreshTimeline(); // from the trace source (the pane does it once a second while steps arrive)
    bool paused() const;

private:
    struct Series {
        QCPGraph* graph = nullptr;
        QCPItemStraightLine* p50 = nullptr;
        QCPItemStraightLine* p95 = nullptr;
        std::vector<std::pair<double, double>> recent; // (t, ms) inside the window, for the percentiles
    };
    // The constructor's parts.
    QHBoxLayout* makeTopRow(); // the intro, Export timeline…, Save charts… and Pause
    QScrollArea* makePlots();  // the four plots, two by two
    void addGraphs();          // tokens/s, time to first token, the stacked time per token and its prediction
    void addHoverTips();
    void startTimers();        // the redraw and the timeline's refresh
    Series& series(const std::string& name);
    void redraw();

    QCustomPlot* m_tokens;
    QCustomPlot* m_links;
    QCustomPlot* m_stack;
    QCPGraph* m_tps = nullptr;
    QCPGraph* m_ttft = nullptr;
    QCPBars* m_compute = nullptr;
    QCPBars* m_allReduce = nullptr;
    QCPBars* m_linkBars = nullptr;
    QCPBars* m_other = nullptr;
    QCPGraph* m_predicted = nullptr;
    std::map<std::string, Series> m_series;
    std::vector<std::string> m_order;
    QCheckBox* m_pause;
    std::function<std::string(size_t)> m_trace;
    QCustomPlot* m_timeline = nullptr;
    QStringList m_timelineRows;
    int m_timelineSpans = 0;
    size_t m_timelineAt = 0; // m_points when it was last drawn
    QTimer* m_timer;
    QElapsedTimer m_clock;
    double m_prediction = 0;
    double m_lastT = 0;
    double m_tokenIndex = 0;
    size_t m_points = 0;
    bool m_dirty = false;
    static constexpr double kWindowSeconds = 60;
    static constexpr double kWindowTokens = 120;
    static constexpr size_t kTimelineSteps = 6;
};

} // namespace together::gui
