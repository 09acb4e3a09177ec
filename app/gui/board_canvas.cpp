// SPDX-License-Identifier: MIT
// The canvas's layout, geometry and selection; its drags and drops are in board_canvas_drag_drop.cpp.
#include "gui/board_canvas.h"

#include "gui/plan_edit.h"

#include <QPainter>

#include <algorithm>
#include <cmath>

namespace together::gui {

namespace {

QString q(const std::string& s) { return QString::fromStdString(s); }

} // namespace

BoardCanvas::BoardCanvas(QWidget* parent)
    : QWidget(parent)
{
    setAcceptDrops(true);
    setAccessibleName("Placement board");
    setAccessibleDescription("One lane per machine; drag layers onto a lane, or a machine's address onto a stage");
}

void BoardCanvas::setLayers(int64_t numLayers)
{
    if (numLayers == m_layers)
        return;
    for (auto* b : m_blocks)
        b->deleteLater();
    m_blocks.clear();
    m_selected.clear();
    m_anchor = -1;
    m_layers = std::max<int64_t>(0, numLayers);
    for (int64_t l = 0; l < m_layers; ++l) {
        auto* b = new LayerBlock(*this, l, this);
        m_blocks.push_back(b);
    }
    updateGeometry();
    relayout();
}

void BoardCanvas::show(const Plan& plan, const std::vector<LaneInfo>& lanes)
{
    m_plan = plan;
    // Lanes are kept by address so a focused or hovered one survives a refresh.
    std::vector<Lane*> next;
    for (auto& info : lanes) {
        Lane* l = lane(info.address);
        if (!l) {
            l = new Lane(*this, this);
            l->lower();
            l->QWidget::show();
        }
        l->setInfo(info);
        next.push_back(l);
    }
    for (auto* l : m_lanes)
        if (std::find(next.begin(), next.end(), l) == next.end()) {
            if (m_dropLane == l)
                m_dropLane = nullptr;
            l->deleteLater();
        }
    m_lanes = next;
    // Focus order: layers first, in order.
    for (size_t i = 1; i < m_blocks.size(); ++i)
        setTabOrder(m_blocks[i - 1], m_blocks[i]);
    updateGeometry();
    relayout();
    restyle();
    update();
}

LayerBlock* BoardCanvas::block(int64_t layer) const
{
    return layer >= 0 && layer < static_cast<int64_t>(m_blocks.size()) ? m_blocks[static_cast<size_t>(layer)] : nullptr;
}

Lane* BoardCanvas::lane(const std::string& address) const
{
    for (auto* l : m_lanes)
        if (l->info().address == address)
            return l;
    return nullptr;
}

double BoardCanvas::cellWidth() const
{
    const double avail = width() - kHeaderWidth - 8;
    return std::max(18.0, std::min(64.0, avail / static_cast<double>(m_layers + 2)));
}

int BoardCanvas::columnX(int64_t column) const
{
    return kHeaderWidth + 4 + static_cast<int>(std::lround((column + 1) * cellWidth()));
}

int64_t BoardCanvas::columnAt(int x) const
{
    if (x < kHeaderWidth)
        return -2;
    const int64_t c = static_cast<int64_t>(std::floor((x - kHeaderWidth - 4) / cellWidth())) - 1;
    return std::clamp<int64_t>(c, -1, m_layers);
}

QColor BoardCanvas::stageColour(int stage) const
{
    static const QColor colours[] = {QColor("#8ec5ff"), QColor("#ffc98b"), QColor("#a8e6a1"), QColor("#e3b5f5"),
                                     QColor("#ffb3b3"), QColor("#9fe3de"), QColor("#f5e29a"), QColor("#c9c9ff")};
    return colours[static_cast<size_t>(std::max(0, stage)) % (sizeof colours / sizeof colours[0])];
}

Lane* BoardCanvas::laneAt(QPoint pos) const
{
    for (auto* l : m_lanes)
        if (l->geometry().contains(pos))
            return l;
    return nullptr;
}

QSize BoardCanvas::sizeHint() const
{
    return {kHeaderWidth + 8 + static_cast<int>((m_layers + 2) * 30), std::max<int>(1, static_cast<int>(m_lanes.size())) * kLaneHeight + 2};
}

QSize BoardCanvas::minimumSizeHint() const
{
    return {kHeaderWidth + 8 + static_cast<int>((m_layers + 2) * 18), std::max<int>(1, static_cast<int>(m_lanes.size())) * kLaneHeight + 2};
}

void BoardCanvas::resizeEvent(QResizeEvent*) { relayout(); }

void BoardCanvas::relayout()
{
    for (size_t i = 0; i < m_lanes.size(); ++i)
        m_lanes[i]->setGeometry(0, static_cast<int>(i) * kLaneHeight, width(), kLaneHeight);
    const auto ranks = layerRanks(m_plan, m_layers);
    for (int64_t l = 0; l < m_layers; ++l) {
        LayerBlock* b = m_blocks[static_cast<size_t>(l)];
        Lane* on = lane(ranks[l].empty() ? std::string() : ranks[l].front().worker); // "": the not-placed lane
        if (!on) {
            b->hide();
            continue;
        }
        const int x = columnX(l), w = columnX(l + 1) - x;
        b->setGeometry(x, on->y() + 3, std::max(8, w), kLaneHeight - 6);
        b->raise();
        b->QWidget::show();
    }
}

void BoardCanvas::restyle()
{
    for (int64_t l = 0; l < m_layers; ++l) {
        const int s = stageOf(m_plan, l);
        QString tip;
        if (s >= 0) {
            const auto& st = m_plan.stages[static_cast<size_t>(s)];
            tip = QString("stage %1 (layers %2-%3) on ").arg(s).arg(st.firstLayer).arg(st.lastLayer);
            for (size_t r = 0; r < st.ranks.size(); ++r)
                tip += (r ? " + " : "") + q(st.ranks[r].worker);
        } else {
            tip = "not placed";
        }
        m_blocks[static_cast<size_t>(l)]->setLook(s >= 0 ? stageColour(s) : QColor("#cccccc"), m_selected.count(l) > 0, tip);
    }
}

void BoardCanvas::paintEvent(QPaintEvent*)
{
    QPainter p(this);
    p.fillRect(rect(), palette().base());
    if (m_lanes.empty()) {
        p.setPen(QColor("#777"));
        p.drawText(rect(), Qt::AlignCenter | Qt::TextWordWrap, "Machines appear here as lanes once they answer.");
    }
}

void BoardCanvas::select(int64_t layer, Qt::KeyboardModifiers modifiers)
{
    if (layer < 0 || layer >= m_layers)
        return;
    if (modifiers & Qt::ShiftModifier && m_anchor >= 0) {
        std::set<int64_t> s = (modifiers & Qt::ControlModifier) ? m_selected : std::set<int64_t>{};
        for (int64_t l = std::min(m_anchor, layer); l <= std::max(m_anchor, layer); ++l)
            s.insert(l);
        m_selected = s;
    } else if (modifiers & Qt::ControlModifier) {
        if (!m_selected.erase(layer))
            m_selected.insert(layer);
        m_anchor = layer;
    } else {
        m_selected = {layer};
        m_anchor = layer;
    }
    restyle();
    Q_EMIT selectionChanged();
}

void BoardCanvas::setSelection(const std::set<int64_t>& layers)
{
    m_selected.clear();
    for (int64_t l : layers)
        if (l >= 0 && l < m_layers)
            m_selected.insert(l);
    if (!m_selected.empty() && m_anchor < 0)
        m_anchor = *m_selected.begin();
    restyle();
    Q_EMIT selectionChanged();
}

void BoardCanvas::focusLayer(int64_t layer, bool extend)
{
    LayerBlock* b = block(std::clamp<int64_t>(layer, 0, m_layers - 1));
    if (!b)
        return;
    b->setFocus(Qt::TabFocusReason);
    if (extend)
        select(b->layer(), Qt::ShiftModifier);
}

} // namespace together::gui
