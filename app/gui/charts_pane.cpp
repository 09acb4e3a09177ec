// SPDX-License-Identifier: MIT
#include "gui/charts_pane.h"

#include "base/files.h"
#include "session/theme.h"

#include <QCheckBox>
#include <QFileDialog>
#include <QMessageBox>
#include <QPushButton>
#include <QBuffer>
#include <QScrollArea>
#include <QGridLayout>
#include <QHBoxLayout>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QLabel>
#include <QTimer>
#include <QVBoxLayout>

// qcustomplot.h is written with Qt's lower-case keywords, which this library turns off (core has methods
// named emit): they are defined for this one header only.
#define signals Q_SIGNALS
#define slots Q_SLOTS
#define emit Q_EMIT
#define foreach Q_FOREACH
#include <qcustomplot.h>
#undef signals
#undef slots
#undef emit
#undef foreach

#include <algorithm>

namespace together::gui {

namespace {
QCustomPlot* makePlot(const QString& title, const QString& xLabel, const QString& yLabel)
{
    auto* p = new QCustomPlot;
    p->setAccessibleName(title);
    // Its own minimum grows with the legend's longest entry: the layout must not let that push the window's
    // other panes aside, so it holds the plot to a fixed floor instead.
    p->setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Ignored);
    p->setMinimumSize(200, 150);
    p->plotLayout()->insertRow(0);
    p->plotLayout()->addElement(0, 0, new QCPTextElement(p, title, QFont("sans", 9, QFont::Bold)));
    p->xAxis->setLabel(xLabel);
    p->yAxis->setLabel(yLabel);
    p->legend->setVisible(true);
    p->legend->setFont(QFont("sans", 7));
    p->legend->setBrush(QColor(255, 255, 255, 170));
    p->legend->setBorderPen(Qt::NoPen);
    p->legend->setIconSize(12, 8);
    p->legend->setRowSpacing(-3);
    // The legend goes under the axes, in columns, so it never covers the data.
    auto* below = new QCPLayoutGrid;
    p->plotLayout()->addElement(2, 0, below);
    p->plotLayout()->setRowStretchFactor(2, 0.001);
    below->setMargins(QMargins(0, 0, 0, 0));
    below->addElement(0, 0, p->legend);
    p->legend->setFillOrder(QCPLegend::foColumnsFirst);
    p->legend->setWrap(2);
    p->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);
    p->setNoAntialiasingOnDrag(true);
    return p;
}

QColor seriesColour(size_t i)
{
    static const QColor colours[] = {QColor(0x1f, 0x77, 0xb4), QColor(0xff, 0x7f, 0x0e), QColor(0x2c, 0xa0, 0x2c), QColor(0xd6, 0x27, 0x28),
                                     QColor(0x94, 0x67, 0xbd), QColor(0x8c, 0x56, 0x4b), QColor(0xe3, 0x77, 0xc2), QColor(0x7f, 0x7f, 0x7f)};
    return colours[i % (sizeof colours / sizeof colours[0])];
}

double percentile(std::vector<double> v, double q)
{
    if (v.empty())
        return 0;
    std::sort(v.begin(), v.end());
    return v[static_cast<size_t>(q * (v.size() - 1))];
}
} // namespace

ChartsPane::ChartsPane(QWidget* parent)
    : QWidget(parent)
{
    auto* layout = new QVBoxLayout(this);
    layout->addLayout(makeTopRow());
    layout->addWidget(makePlots(), 1);
    addGraphs();
    addHoverTips();
    startTimers();
}

QHBoxLayout* ChartsPane::makeTopRow()
{
    auto* top = new QHBoxLayout;
    m_pause = new QCheckBox("Pause");
    m_pause->setAccessibleName("Pause");
    m_pause->setToolTip("Freeze the charts' axes to look closer; points keep arriving");
    auto* intro = new QLabel("Live: the last minute, the last 120 tokens, the last 6 steps. Hover for values; drag and wheel to zoom.");
    intro->setToolTip("Tokens/s and per-link latency over the last minute; time per token over the last 120 tokens with the "
                      "cost model's prediction; the timeline of the last 6 steps, one row per rank (compute, all-reduce, links).");
    // Wrapped: a long line would set the whole window's minimum width.
    intro->setWordWrap(true);
    top->addWidget(intro, 1);
    auto* timeline = new QPushButton("Export timeline…");
    timeline->setAccessibleName("Export timeline…");
    timeline->setToolTip("The session's steps, one row per rank, as Chrome trace JSON (chrome://tracing, Perfetto)");
    auto* png = new QPushButton("Save charts…");
    png->setAccessibleName("Save charts…");
    top->addWidget(timeline);
    top->addWidget(png);
    top->addWidget(m_pause);
    connect(timeline, &QPushButton::clicked, this, [this] {
        const QString path = QFileDialog::getSaveFileName(this, "Export timeline", "together-timeline.json", "Chrome trace (*.json)");
        if (path.isEmpty())
            return;
        if (const QString error = exportTimeline(path); !error.isEmpty())
            QMessageBox::warning(this, "Export timeline", error);
    });
    connect(png, &QPushButton::clicked, this, [this] {
        const QString path = QFileDialog::getSaveFileName(this, "Save charts (four PNG files)", "together-charts", "PNG prefix (*)");
        if (path.isEmpty())
            return;
        if (const QString error = saveCharts(path); !error.isEmpty())
            QMessageBox::warning(this, "Save charts", error);
    });
    return top;
}

QScrollArea* ChartsPane::makePlots()
{
    // Two by two: speed and where it goes on top, per-link latency and the timeline of the last tokens below.
    // In a scroll area: a dock made shorter than the four plots' floor scrolls instead of drawing them under
    // whatever comes next.
    auto* plotArea = new QWidget;
    auto* plots = new QGridLayout(plotArea);
    plots->setContentsMargins(0, 0, 0, 0);
    plots->setSpacing(4);
    m_tokens = makePlot("Tokens/s", "time (s)", "tokens/s");
    m_links = makePlot("Per-link latency per token", "time (s)", "ms");
    m_stack = makePlot("Time per token", "token", "ms");
    m_timeline = makePlot("Timeline of the last tokens", "ms", "");
    m_timeline->legend->setVisible(false);
    m_timeline->yAxis->setTicker(QSharedPointer<QCPAxisTickerText>(new QCPAxisTickerText));
    m_timeline->yAxis->setRangeReversed(true);
    m_timeline->yAxis->grid()->setVisible(false);
    m_timeline->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);
    m_timeline->axisRect()->setRangeDrag(Qt::Horizontal);
    m_timeline->axisRect()->setRangeZoom(Qt::Horizontal);
    {
        auto* key = new QCPTextElement(m_timeline, "blue: compute · orange: all-reduce · green: link · grey: sampling", QFont("sans", 7));
        if (auto* below = qobject_cast<QCPLayoutGrid*>(m_timeline->plotLayout()->element(2, 0)))
            below->addElement(1, 0, key);
    }
    plots->addWidget(m_tokens, 0, 0);
    plots->addWidget(m_stack, 0, 1);
    plots->addWidget(m_links, 1, 0);
    plots->addWidget(m_timeline, 1, 1);
    auto* scroll = new QScrollArea;
    scroll->setWidget(plotArea);
    scroll->setWidgetResizable(true);
    scroll->setFrameShape(QFrame::NoFrame);
    scroll->setFocusPolicy(Qt::NoFocus);
    return scroll;
}

void ChartsPane::addGraphs()
{
    m_tps = m_tokens->addGraph();
    m_tps->setName("decode tokens/s");
    m_tps->setPen(QPen(accentColor(), 1.5));
    m_tps->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssDisc, 3));
    m_ttft = m_tokens->addGraph(m_tokens->xAxis, m_tokens->yAxis2);
    m_ttft->setName("time to first token (ms, right)");
    m_ttft->setLineStyle(QCPGraph::lsNone);
    m_ttft->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssDiamond, QColor(0xd6, 0x27, 0x28), 7));
    m_tokens->yAxis2->setVisible(true);
    m_tokens->yAxis2->setLabel("ms");

    auto bars = [this](const QString& name, const QColor& c) {
        auto* b = new QCPBars(m_stack->xAxis, m_stack->yAxis);
        b->setName(name);
        b->setPen(Qt::NoPen);
        b->setBrush(c);
        b->setWidth(0.9);
        return b;
    };
    m_compute = bars("compute", QColor(0x1f, 0x77, 0xb4));
    m_allReduce = bars("all-reduce", QColor(0xff, 0x7f, 0x0e));
    m_linkBars = bars("links", QColor(0x2c, 0xa0, 0x2c));
    m_other = bars("sampling and the rest", QColor(0xb0, 0xb0, 0xb0));
    m_allReduce->moveAbove(m_compute);
    m_linkBars->moveAbove(m_allReduce);
    m_other->moveAbove(m_linkBars);
    m_predicted = m_stack->addGraph();
    m_predicted->setName("predicted");
    m_predicted->setPen(QPen(Qt::black, 1.5, Qt::DashLine));
}

void ChartsPane::addHoverTips()
{
    // Hover: the value under the mouse as a tooltip.
    for (QCustomPlot* p : {m_tokens, m_links, m_stack})
        connect(p, &QCustomPlot::mouseMove, p, [p](QMouseEvent* e) {
            QCPAbstractPlottable* hit = p->plottableAt(e->position(), true);
            if (!hit) {
                p->setToolTip({});
                return;
            }
            // The data point nearest the mouse, not the mouse's own coordinates.
            const double x = p->xAxis->pixelToCoord(e->position().x());
            QCPPlottableInterface1D* data = hit->interface1D();
            if (!data || data->dataCount() == 0) {
                p->setToolTip({});
                return;
            }
            int i = std::clamp(data->findBegin(x, false), 0, data->dataCount() - 1);
            if (i + 1 < data->dataCount() && std::abs(data->dataMainKey(i + 1) - x) < std::abs(data->dataMainKey(i) - x))
                ++i;
            p->setToolTip(QString("%1\n%2 %3: %4")
                              .arg(hit->name())
                              .arg(p->xAxis->label())
                              .arg(data->dataMainKey(i), 0, 'f', 1)
                              .arg(data->dataMainValue(i), 0, 'f', 2));
        });
    connect(m_timeline, &QCustomPlot::mouseMove, m_timeline, [this](QMouseEvent* e) {
        QCPAbstractItem* hit = m_timeline->itemAt(e->position(), true);
        m_timeline->setToolTip(hit ? hit->property("tip").toString() : QString());
    });
}

void ChartsPane::startTimers()
{
    auto* timelineTimer = new QTimer(this);
    timelineTimer->setInterval(1000);
    connect(timelineTimer, &QTimer::timeout, this, [this] {
        if (m_points != m_timelineAt && !paused() && isVisible())
            refreshTimeline();
    });
    timelineTimer->start();

    m_timer = new QTimer(this);
    m_timer->setInterval(50);
    connect(m_timer, &QTimer::timeout, this, &ChartsPane::redraw);
    m_timer->start();
    m_clock.start();
}

ChartsPane::~ChartsPane() = default;

bool ChartsPane::paused() const { return m_pause->isChecked(); }

ChartsPane::Series& ChartsPane::series(const std::string& name)
{
    auto it = m_series.find(name);
    if (it != m_series.end())
        return it->second;
    Series s;
    const QColor c = seriesColour(m_order.size());
    s.graph = m_links->addGraph();
    s.graph->setName(QString::fromStdString(name));
    s.graph->setPen(QPen(c, 1.2));
    for (auto** line : {&s.p50, &s.p95}) {
        *line = new QCPItemStraightLine(m_links);
        (*line)->setPen(QPen(c, 1, line == &s.p50 ? Qt::DashLine : Qt::DotLine));
        (*line)->point1->setCoords(0, 0);
        (*line)->point2->setCoords(1, 0);
    }
    m_order.push_back(name);
    return m_series.emplace(name, s).first->second;
}

std::vector<std::string> ChartsPane::seriesNames() const { return m_order; }

void ChartsPane::addStep(const StepRecord& step)
{
    if (step.step == 0 || step.endToEndMs <= 0)
        return; // the prefill is not a token's time
    const double t = m_clock.nsecsElapsed() / 1e9;
    // After a pause between replies the lines break instead of joining across the idle time.
    if (m_lastT > 0 && t - m_lastT > 2.0) {
        const double gap = m_lastT + 0.001;
        m_tps->addData(gap, qQNaN());
        for (auto& [name, s] : m_series)
            s.graph->addData(gap, qQNaN());
    }
    m_lastT = t;
    m_tps->addData(t, 1000.0 / step.endToEndMs);

    // Per stage: the slowest rank's compute and all-reduce; each stage's link from its rank 0.
    std::map<int, double> compute, allReduce;
    std::map<std::string, double> links;
    for (auto& r : step.ranks) {
        compute[r.stage] = std::max(compute[r.stage], r.computeMs);
        if (r.allReduces > 0)
            allReduce[r.stage] = std::max(allReduce[r.stage], r.allReduceMs);
        if (!r.linkName.empty() && r.linkMs >= 0)
            links[r.linkName] = std::max(links[r.linkName], r.linkMs);
    }
    double c = 0, a = 0, l = 0;
    for (auto& [stage, ms] : compute)
        c += ms;
    for (auto& [stage, ms] : allReduce) {
        a += ms;
        Series& s = series("all-reduce stage " + std::to_string(stage));
        s.graph->addData(t, ms);
        s.recent.emplace_back(t, ms);
    }
    for (auto& [name, ms] : links) {
        l += ms;
        Series& s = series(name);
        s.graph->addData(t, ms);
        s.recent.emplace_back(t, ms);
    }
    const double rest = std::max(0.0, step.endToEndMs - c - a - l);
    m_tokenIndex += 1;
    m_compute->addData(m_tokenIndex, c);
    m_allReduce->addData(m_tokenIndex, a);
    m_linkBars->addData(m_tokenIndex, l);
    m_other->addData(m_tokenIndex, rest);
    ++m_points;
    m_dirty = true;
}

void ChartsPane::addTimeToFirstToken(double ms)
{
    if (ms < 0)
        return;
    m_ttft->addData(m_clock.nsecsElapsed() / 1e9, ms);
    m_dirty = true;
}

void ChartsPane::setPrediction(double msPerToken)
{
    m_prediction = msPerToken;
    m_dirty = true;
}

void ChartsPane::clear()
{
    m_tps->data()->clear();
    m_ttft->data()->clear();
    for (auto* b : {m_compute, m_allReduce, m_linkBars, m_other})
        b->data()->clear();
    for (auto& [name, s] : m_series) {
        m_links->removeGraph(s.graph);
        m_links->removeItem(s.p50);
        m_links->removeItem(s.p95);
    }
    m_series.clear();
    m_order.clear();
    m_timeline->clearItems();
    m_timelineRows.clear();
    m_timelineSpans = 0;
    m_tokenIndex = 0;
    m_points = 0;
    m_dirty = true;
}

QString ChartsPane::exportTimeline(const QString& path) const
{
    if (!m_trace)
        return "nothing has run yet";
    try {
        atomicWrite(path.toStdString(), m_trace(0));
    } catch (const std::exception& e) {
        return e.what();
    }
    return {};
}

QString ChartsPane::saveCharts(const QString& prefix)
{
    const std::pair<QCustomPlot*, const char*> plots[] = {
        {m_tokens, "-tokens.png"}, {m_links, "-links.png"}, {m_stack, "-time-per-token.png"}, {m_timeline, "-timeline.png"}};
    for (auto& [plot, suffix] : plots) {
        plot->replot(QCustomPlot::rpImmediateRefresh);
        QByteArray png;
        QBuffer buffer(&png);
        buffer.open(QIODevice::WriteOnly);
        QImage image = plot->toPixmap(std::max(plot->width(), 640), std::max(plot->height(), 360)).toImage();
        image.setDotsPerMeterX(3780); // 96 dpi, as QCustomPlot::savePng marks its pictures
        image.setDotsPerMeterY(3780);
        if (!image.save(&buffer, "PNG"))
            return "cannot draw " + prefix + suffix;
        try {
            atomicWrite((prefix + suffix).toStdString(), std::string_view(png.constData(), static_cast<size_t>(png.size())));
        } catch (const std::exception& e) {
            return e.what();
        }
    }
    return {};
}

void ChartsPane::refreshTimeline()
{
    m_timelineAt = m_points;
    if (!m_trace)
        return;
    // The same events the exported trace holds (one process per rank, times on the master's clock), the last
    // few steps: compute spans with their all-reduces over them, sampling, and each rank's send on its link.
    const QJsonDocument doc = QJsonDocument::fromJson(QByteArray::fromStdString(m_trace(kTimelineSteps)));
    const QJsonArray events = doc.isArray() ? doc.array() : doc.object().value("traceEvents").toArray();
    std::map<int, QString> names;
    for (const auto& v : events) {
        const QJsonObject e = v.toObject();
        if (e.value("ph").toString() == "M" && e.value("name").toString() == "process_name")
            names[e.value("pid").toInt()] = e.value("args").toObject().value("name").toString();
    }
    m_timeline->clearItems();
    m_timelineRows.clear();
    m_timelineSpans = 0;
    std::map<int, int> row;
    auto ticker = m_timeline->yAxis->ticker().dynamicCast<QCPAxisTickerText>();
    ticker->clear();
    for (auto& [pid, name] : names) {
        row[pid] = static_cast<int>(m_timelineRows.size());
        ticker->addTick(row[pid], name.section(" (", 0, 0).replace("stage ", "s").replace(" rank ", " r"));
        m_timelineRows << name;
    }
    double lo = std::numeric_limits<double>::infinity(), hi = 0;
    auto span = [&](int pid, double ts, double dur, double y0, double y1, const QColor& c, const QString& tip) {
        auto it = row.find(pid);
        if (it == row.end() || dur < 0)
            return;
        auto* r = new QCPItemRect(m_timeline);
        r->topLeft->setCoords(ts / 1000.0, it->second + y0);
        r->bottomRight->setCoords((ts + std::max(dur, 1.0)) / 1000.0, it->second + y1);
        r->setPen(Qt::NoPen);
        r->setBrush(c);
        r->setProperty("tip", QString("%1\n%2 ms").arg(tip).arg(dur / 1000.0, 0, 'f', 3));
        lo = std::min(lo, ts / 1000.0);
        hi = std::max(hi, (ts + dur) / 1000.0);
        ++m_timelineSpans;
    };
    // Compute first, the all-reduces over it.
    for (const char* pass : {"compute", "all-reduce", "sampling", "link"})
        for (const auto& v : events) {
            const QJsonObject e = v.toObject();
            if (e.value("ph").toString() != "X" || e.value("cat").toString() != pass)
                continue;
            const QString cat = e.value("cat").toString();
            const QColor c = cat == "compute" ? QColor(0x1f, 0x77, 0xb4)
                             : cat == "all-reduce" ? QColor(0xff, 0x7f, 0x0e)
                             : cat == "link"       ? QColor(0x2c, 0xa0, 0x2c)
                                                   : QColor(0x90, 0x90, 0x90);
            const bool link = cat == "link";
            const QJsonObject args = e.value("args").toObject();
            const QString tip = QString("%1: %2, step %3").arg(names[e.value("pid").toInt()], e.value("name").toString()).arg(args.value("step").toInteger());
            span(e.value("pid").toInt(), e.value("ts").toDouble(), e.value("dur").toDouble(), link ? 0.12 : -0.38, link ? 0.38 : 0.08, c, tip);
        }
    m_timeline->yAxis->setRange(-0.6, std::max<double>(0.6, m_timelineRows.size() - 0.4));
    if (hi > lo)
        m_timeline->xAxis->setRange(lo, hi + (hi - lo) * 0.02);
    m_timeline->replot(QCustomPlot::rpQueuedReplot);
}

void ChartsPane::redraw()
{
    if (!m_dirty || paused() || !isVisible())
        return;
    m_dirty = false;
    const double from = m_lastT - kWindowSeconds;
    m_tps->data()->removeBefore(from);
    m_ttft->data()->removeBefore(from);
    const double firstToken = m_tokenIndex - kWindowTokens;
    for (auto* b : {m_compute, m_allReduce, m_linkBars, m_other})
        b->data()->removeBefore(firstToken);
    double linkMax = 0;
    for (auto& [name, s] : m_series) {
        s.graph->data()->removeBefore(from);
        s.recent.erase(std::remove_if(s.recent.begin(), s.recent.end(), [&](auto& p) { return p.first < from; }), s.recent.end());
        std::vector<double> v;
        for (auto& p : s.recent)
            v.push_back(p.second);
        const double p50 = percentile(v, 0.5), p95 = percentile(v, 0.95);
        s.p50->point1->setCoords(0, p50);
        s.p50->point2->setCoords(1, p50);
        s.p95->point1->setCoords(0, p95);
        s.p95->point2->setCoords(1, p95);
        s.graph->setName(QString("%1 (p50 %2, p95 %3 ms)").arg(QString::fromStdString(name)).arg(p50, 0, 'f', 2).arg(p95, 0, 'f', 2));
        for (auto& p : s.recent)
            linkMax = std::max(linkMax, p.second);
    }
    m_predicted->data()->clear();
    if (m_prediction > 0) {
        m_predicted->addData(std::max(0.0, firstToken) + 0.5, m_prediction);
        m_predicted->addData(m_tokenIndex + 0.5, m_prediction);
        m_predicted->setName(QString("predicted %1 ms").arg(m_prediction, 0, 'f', 2));
    }
    // Seconds since the pane opened: the last minute, or the first 10 s until there is more.
    const double right = std::max(m_lastT, 10.0);
    m_tokens->xAxis->setRange(std::max(0.0, right - kWindowSeconds), right);
    m_links->xAxis->setRange(std::max(0.0, right - kWindowSeconds), right);
    m_stack->xAxis->setRange(std::max(0.5, m_tokenIndex + 0.5 - kWindowTokens), std::max(m_tokenIndex + 0.5, 20.5));
    bool found = false;
    const QCPRange tps = m_tps->data()->valueRange(found);
    m_tokens->yAxis->setRange(0, found ? tps.upper * 1.15 : 1);
    const QCPRange ttft = m_ttft->data()->valueRange(found);
    m_tokens->yAxis2->setRange(0, found ? ttft.upper * 1.15 : 1);
    m_links->yAxis->setRange(0, linkMax > 0 ? linkMax * 1.15 : 1);
    double stackMax = m_prediction;
    for (auto it = m_compute->data()->constBegin(); it != m_compute->data()->constEnd(); ++it) {
        const double key = it->key;
        double sum = it->value;
        for (auto* b : {m_allReduce, m_linkBars, m_other}) {
            auto at = b->data()->findBegin(key, false);
            if (at != b->data()->constEnd() && at->key == key)
                sum += at->value;
        }
        stackMax = std::max(stackMax, sum);
    }
    m_stack->yAxis->setRange(0, stackMax > 0 ? stackMax * 1.15 : 1);
    for (QCustomPlot* p : {m_tokens, m_links, m_stack})
        p->replot(QCustomPlot::rpQueuedReplot);
}

} // namespace together::gui
