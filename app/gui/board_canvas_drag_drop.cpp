// SPDX-License-Identifier: MIT
// The canvas's drags and drops: their payloads, what a drop at a spot would do (checked while the drag hovers),
// and the edits the drops and the keyboard path make.
#include "gui/board_canvas.h"

#include "gui/plan_edit.h"

#include <QDrag>
#include <QDropEvent>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QMimeData>
#include <QPainter>

#include <algorithm>

namespace together::gui {

namespace {

const char* kLayersMime = "application/x-together-layers";
const char* kWorkerMime = "application/x-together-worker";
const char* kRankMime = "application/x-together-rank";

QString layerList(const std::vector<int64_t>& layers)
{
    if (layers.size() == 1)
        return QString("Layer %1").arg(layers.front());
    std::vector<int64_t> s = layers;
    std::sort(s.begin(), s.end());
    if (s.back() - s.front() + 1 == static_cast<int64_t>(s.size()))
        return QString("Layers %1-%2").arg(s.front()).arg(s.back());
    return QString("%1 layers").arg(s.size());
}

QString q(const std::string& s) { return QString::fromStdString(s); }

} // namespace

std::vector<int64_t> BoardCanvas::dragLayersFor(int64_t pressed) const
{
    if (m_selected.count(pressed))
        return {m_selected.begin(), m_selected.end()};
    return {pressed};
}

QMimeData* BoardCanvas::layersMime(const std::vector<int64_t>& layers)
{
    auto* m = new QMimeData;
    QJsonArray a;
    for (int64_t l : layers)
        a.append(static_cast<qint64>(l));
    m->setData(kLayersMime, QJsonDocument(QJsonObject{{"layers", a}}).toJson(QJsonDocument::Compact));
    return m;
}

QMimeData* BoardCanvas::workerMime(const std::string& address)
{
    auto* m = new QMimeData;
    m->setData(kWorkerMime, QByteArray::fromStdString(address));
    return m;
}

QMimeData* BoardCanvas::rankMime(const std::string& worker, int stage)
{
    auto* m = new QMimeData;
    m->setData(kRankMime, QJsonDocument(QJsonObject{{"worker", q(worker)}, {"stage", stage}}).toJson(QJsonDocument::Compact));
    return m;
}

void BoardCanvas::startLayerDrag(LayerBlock* from)
{
    if (!m_readOnly.isEmpty()) {
        Q_EMIT refused(m_readOnly);
        return;
    }
    const auto layers = dragLayersFor(from->layer());
    auto* drag = new QDrag(from);
    drag->setMimeData(layersMime(layers));
    drag->setPixmap(from->grab());
    drag->setHotSpot(QPoint(from->width() / 2, from->height() / 2));
    drag->exec(Qt::MoveAction);
    m_dropLane = nullptr;
    for (auto* l : m_lanes)
        l->update();
}

void BoardCanvas::startLaneDrag(Lane* from, QPoint at)
{
    if (!m_readOnly.isEmpty()) {
        Q_EMIT refused(m_readOnly);
        return;
    }
    const std::string addr = from->info().address;
    if (addr.empty()) // the lane of layers no machine runs
        return;
    QMimeData* mime = nullptr;
    int stage = -1;
    if (at.x() < kHeaderWidth) {
        mime = workerMime(addr);
    } else {
        const int64_t col = columnAt(at.x());
        stage = col >= 0 && col < m_layers ? stageOf(m_plan, col) : -1;
        if (stage < 0)
            return;
        const auto& ranks = m_plan.stages[static_cast<size_t>(stage)].ranks;
        auto it = std::find_if(ranks.begin(), ranks.end(), [&](const PlanRank& r) { return r.worker == addr; });
        if (it == ranks.end() || it == ranks.begin()) // the leading rank moves with its blocks
            return;
        mime = rankMime(addr, stage);
    }
    auto* drag = new QDrag(from);
    drag->setMimeData(mime);
    QPixmap pm(140, 24);
    pm.fill(QColor("#ffffffe0"));
    {
        QPainter p(&pm);
        p.setPen(QColor("#333"));
        p.drawRect(pm.rect().adjusted(0, 0, -1, -1));
        p.drawText(pm.rect(), Qt::AlignCenter, q(addr));
    }
    drag->setPixmap(pm);
    // A rank leaves its stage when it is dropped on the board outside that stage (the drop says so); Esc or a
    // drop elsewhere changes nothing.
    drag->exec(Qt::MoveAction | Qt::LinkAction);
    m_dropLane = nullptr;
    for (auto* l : m_lanes)
        l->update();
}

BoardCanvas::Candidate BoardCanvas::checked(Candidate c) const
{
    if (!c.plan || !c.why.isEmpty())
        return c;
    if (!m_readOnly.isEmpty()) {
        c.why = m_readOnly;
        c.plan.reset();
        return c;
    }
    if (m_fit && !c.target.empty())
        m_fit(*c.plan, c.target);
    if (m_check) {
        const QString why = m_check(*c.plan, c.target);
        if (!why.isEmpty()) {
            c.why = why;
            c.plan.reset();
        }
    }
    return c;
}

BoardCanvas::Candidate BoardCanvas::candidate(const QMimeData* mime, QPoint pos) const
{
    Candidate c;
    Lane* onLane = laneAt(pos);
    const int64_t col = columnAt(pos.x());
    try {
        if (mime->hasFormat(kLayersMime)) {
            const QJsonArray a = QJsonDocument::fromJson(mime->data(kLayersMime)).object().value("layers").toArray();
            std::vector<int64_t> layers;
            for (const auto& v : a)
                layers.push_back(v.toInteger(-1));
            if (layers.empty())
                return c;
            if (!onLane || onLane->info().address.empty()) {
                c.why = "drop the layers onto a machine's lane";
                return c;
            }
            c.target = onLane->info().address;
            c.what = QString("%1 to %2").arg(layerList(layers), q(c.target));
            PlanRank rank{c.target, 1, {}};
            rank.threads = onLane->info().threads;
            Plan p = assignLayers(m_plan, m_layers, layers, rank);
            if (samePlan(p, m_plan))
                c.why = QString("%1 already runs there").arg(layerList(layers));
            else
                c.plan = p;
        } else if (mime->hasFormat(kWorkerMime)) {
            c.target = mime->data(kWorkerMime).toStdString();
            const int stage = col >= 0 && col < m_layers ? stageOf(m_plan, col) : -1;
            if (stage < 0) {
                c.why = "drop the machine onto a stage's layers to add it as a tensor-parallel rank";
                return c;
            }
            Lane* from = lane(c.target);
            PlanRank rank{c.target, from ? from->info().threads : 1, {}};
            c.what = QString("%1 joins stage %2 as a tensor-parallel rank").arg(q(c.target)).arg(stage);
            c.plan = addRank(m_plan, static_cast<size_t>(stage), rank);
        } else if (mime->hasFormat(kRankMime)) {
            const QJsonObject o = QJsonDocument::fromJson(mime->data(kRankMime)).object();
            const std::string worker = o.value("worker").toString().toStdString();
            const int stage = o.value("stage").toInt(-1);
            if (stage < 0 || stage >= static_cast<int>(m_plan.stages.size()))
                return c;
            const auto& st = m_plan.stages[static_cast<size_t>(stage)];
            if (onLane && onLane->info().address == worker && col >= st.firstLayer && col <= st.lastLayer) {
                c.why = "drag the rank off its stage to remove it";
                return c;
            }
            c.what = QString("%1 leaves stage %2").arg(q(worker)).arg(stage);
            c.plan = removeRank(m_plan, m_layers, static_cast<size_t>(stage), worker);
        }
    } catch (const std::exception& e) {
        c.why = e.what();
        c.plan.reset();
    }
    return checked(c);
}

void BoardCanvas::dragEnterEvent(QDragEnterEvent* e)
{
    const QMimeData* m = e->mimeData();
    if (m->hasFormat(kLayersMime) || m->hasFormat(kWorkerMime) || m->hasFormat(kRankMime))
        e->acceptProposedAction(); // whether this spot takes it is dragMove's to say
}

void BoardCanvas::dragMoveEvent(QDragMoveEvent* e)
{
    const QPoint pos = e->position().toPoint();
    const Candidate c = candidate(e->mimeData(), pos);
    Lane* l = laneAt(pos);
    if (l != m_dropLane || m_dropOk != c.plan.has_value()) {
        Lane* old = m_dropLane;
        m_dropLane = l;
        m_dropOk = c.plan.has_value();
        if (old)
            old->update();
        if (l)
            l->update();
    }
    if (c.plan) {
        e->acceptProposedAction();
        Q_EMIT hint(c.what);
    } else {
        e->ignore();
        Q_EMIT hint(c.why);
    }
}

void BoardCanvas::dragLeaveEvent(QDragLeaveEvent*)
{
    if (Lane* old = m_dropLane) {
        m_dropLane = nullptr;
        old->update();
    }
    Q_EMIT hint({});
}

void BoardCanvas::dropEvent(QDropEvent* e)
{
    const Candidate c = candidate(e->mimeData(), e->position().toPoint());
    if (Lane* old = m_dropLane) {
        m_dropLane = nullptr;
        old->update();
    }
    if (c.plan) {
        e->acceptProposedAction();
    } else {
        e->setDropAction(Qt::IgnoreAction);
        e->ignore();
    }
    finish(c);
}

void BoardCanvas::finish(const Candidate& c)
{
    if (c.plan)
        Q_EMIT edited(*c.plan, c.what);
    else if (!c.why.isEmpty())
        Q_EMIT refused(c.why);
}

void BoardCanvas::assignTo(const std::vector<int64_t>& layers, const std::string& worker)
{
    if (layers.empty()) {
        Q_EMIT refused("select one or more layers first");
        return;
    }
    Candidate c;
    c.target = worker;
    c.what = QString("%1 to %2").arg(layerList(layers), q(worker));
    try {
        Lane* l = lane(worker);
        Plan p = assignLayers(m_plan, m_layers, layers, PlanRank{worker, l ? l->info().threads : 1, {}});
        if (samePlan(p, m_plan))
            c.why = QString("%1 already runs there").arg(layerList(layers));
        else
            c.plan = p;
    } catch (const std::exception& e) {
        c.why = e.what();
    }
    finish(checked(c));
}

void BoardCanvas::addRankTo(int stage, const std::string& worker)
{
    Candidate c;
    c.target = worker;
    c.what = QString("%1 joins stage %2 as a tensor-parallel rank").arg(q(worker)).arg(stage);
    try {
        Lane* l = lane(worker);
        c.plan = addRank(m_plan, static_cast<size_t>(std::max(0, stage)), PlanRank{worker, l ? l->info().threads : 1, {}});
    } catch (const std::exception& e) {
        c.why = e.what();
    }
    finish(checked(c));
}

void BoardCanvas::removeRankFrom(int stage, const std::string& worker)
{
    Candidate c;
    c.what = QString("%1 leaves stage %2").arg(q(worker)).arg(stage);
    try {
        c.plan = removeRank(m_plan, m_layers, static_cast<size_t>(std::max(0, stage)), worker);
    } catch (const std::exception& e) {
        c.why = e.what();
    }
    finish(checked(c));
}

} // namespace together::gui
