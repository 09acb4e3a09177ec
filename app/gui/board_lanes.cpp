// SPDX-License-Identifier: MIT
#include "gui/board_lanes.h"

#include "gui/board_canvas.h"
#include "session/theme.h"

#include <QApplication>
#include <QContextMenuEvent>
#include <QKeyEvent>
#include <QMouseEvent>
#include <QPainter>

#include <algorithm>
#include <set>

namespace together::gui {

namespace {

QString q(const std::string& s) { return QString::fromStdString(s); }

} // namespace

// ---- LayerBlock ----

LayerBlock::LayerBlock(BoardCanvas& canvas, int64_t layer, QWidget* parent)
    : QPushButton(parent)
    , m_canvas(canvas)
    , m_layer(layer)
{
    const QString name = QString("Layer %1").arg(layer);
    setText(QString::number(layer));
    setAccessibleName(name);
    setCheckable(true);
    setFocusPolicy(Qt::StrongFocus);
    setCursor(Qt::OpenHandCursor);
}

void LayerBlock::setLook(const QColor& colour, bool selected, const QString& tip)
{
    m_colour = colour;
    setChecked(selected);
    setToolTip(tip);
    setAccessibleDescription(tip);
    update();
}

void LayerBlock::paintEvent(QPaintEvent*)
{
    QPainter p(this);
    p.setRenderHint(QPainter::Antialiasing);
    QRectF r = QRectF(rect()).adjusted(1.5, 3.5, -1.5, -3.5);
    const bool sel = isChecked();
    p.setPen(QPen(sel ? QColor("#1a1a1a") : m_colour.darker(140), sel ? 2.5 : 1));
    p.setBrush(sel ? m_colour.lighter(115) : m_colour);
    p.drawRoundedRect(r, 3, 3);
    if (hasFocus()) {
        p.setPen(QPen(QColor("#1a1a1a"), 1, Qt::DotLine));
        p.setBrush(Qt::NoBrush);
        p.drawRoundedRect(r.adjusted(2, 2, -2, -2), 2, 2);
    }
    p.setPen(QColor("#1a1a1a"));
    QFont f = font();
    f.setPointSizeF(std::max(6.0, f.pointSizeF() * (width() < 24 ? 0.75 : 0.9)));
    p.setFont(f);
    p.drawText(r, Qt::AlignCenter, text());
}

void LayerBlock::mousePressEvent(QMouseEvent* e)
{
    m_pressAt = e->position().toPoint();
    m_dragging = false;
    setFocus(Qt::MouseFocusReason);
    if (e->button() != Qt::LeftButton)
        QPushButton::mousePressEvent(e);
}

void LayerBlock::mouseMoveEvent(QMouseEvent* e)
{
    if (!(e->buttons() & Qt::LeftButton) || m_dragging)
        return;
    if ((e->position().toPoint() - m_pressAt).manhattanLength() < QApplication::startDragDistance())
        return;
    m_dragging = true;
    m_canvas.startLayerDrag(this);
}

void LayerBlock::mouseReleaseEvent(QMouseEvent* e)
{
    if (e->button() == Qt::LeftButton && !m_dragging && rect().contains(e->position().toPoint()))
        m_canvas.select(m_layer, e->modifiers());
    m_dragging = false;
}

void LayerBlock::keyPressEvent(QKeyEvent* e)
{
    const bool shift = e->modifiers() & Qt::ShiftModifier;
    switch (e->key()) {
    case Qt::Key_Left:
        m_canvas.focusLayer(m_layer - 1, shift);
        return;
    case Qt::Key_Right:
        m_canvas.focusLayer(m_layer + 1, shift);
        return;
    case Qt::Key_Home:
        m_canvas.focusLayer(0, shift);
        return;
    case Qt::Key_End:
        m_canvas.focusLayer(m_canvas.layers() - 1, shift);
        return;
    case Qt::Key_Escape:
        m_canvas.setSelection({});
        return;
    case Qt::Key_Space:
    case Qt::Key_Select:
        m_canvas.select(m_layer, e->modifiers() | Qt::ControlModifier);
        return;
    case Qt::Key_A:
        if (e->modifiers() & Qt::ControlModifier) {
            std::set<int64_t> all;
            for (int64_t l = 0; l < m_canvas.layers(); ++l)
                all.insert(l);
            m_canvas.setSelection(all);
            return;
        }
        break;
    default:
        break;
    }
    QPushButton::keyPressEvent(e);
}

void LayerBlock::contextMenuEvent(QContextMenuEvent* e)
{
    if (!m_canvas.selection().count(m_layer))
        m_canvas.select(m_layer, Qt::NoModifier);
    Q_EMIT m_canvas.contextMenuRequested(e->globalPos());
}

// ---- Lane ----

Lane::Lane(BoardCanvas& canvas, QWidget* parent)
    : QWidget(parent)
    , m_canvas(canvas)
{
    setAttribute(Qt::WA_Hover);
}

void Lane::setInfo(const LaneInfo& info)
{
    m_info = info;
    setAccessibleName(info.address.empty() ? QString("Not placed") : q(info.address));
    QString d = info.state + QString(", %1 thread%2").arg(info.threads).arg(info.threads == 1 ? "" : "s");
    if (info.usableBytes)
        d += QString(", this placement needs %1 of %2").arg(formatBytes(static_cast<double>(info.needBytes)), formatBytes(static_cast<double>(info.usableBytes)));
    if (info.overMemory)
        d += " (does not fit)";
    if (info.predictedMs >= 0)
        d += QString(", predicted %1 ms per token in its stages").arg(info.predictedMs, 0, 'f', 2);
    setAccessibleDescription(d);
    setToolTip(d + "\nDrag the address onto a stage to add this machine as a tensor-parallel rank.");
    update();
}

void Lane::paintEvent(QPaintEvent*)
{
    QPainter p(this);
    p.setRenderHint(QPainter::Antialiasing);
    const int H = height();
    const bool target = m_canvas.m_dropLane == this;
    QColor bg = m_info.ready ? QColor("#f7f7f5") : QColor("#ececec");
    if (target)
        bg = m_canvas.m_dropOk ? QColor("#dcefdc") : QColor("#f6d8d8");
    p.fillRect(rect(), bg);
    p.setPen(QColor("#d0d0d0"));
    p.drawLine(0, H - 1, width(), H - 1);

    // Header: address, state and threads, memory fill.
    const int hw = BoardCanvas::kHeaderWidth;
    QFont bold = font();
    bold.setBold(true);
    p.setFont(bold);
    p.setPen(m_info.ready ? QColor("#1a1a1a") : QColor("#777"));
    const QRect addr(8, 2, hw - 12, 16);
    p.drawText(addr, Qt::AlignLeft | Qt::AlignVCenter,
               p.fontMetrics().elidedText(m_info.address.empty() ? QString("Not placed") : q(m_info.address), Qt::ElideMiddle, addr.width()));
    QFont small = font();
    small.setPointSizeF(small.pointSizeF() * 0.85);
    p.setFont(small);
    p.setPen(QColor("#555"));
    QString line2 = m_info.address.empty() ? m_info.state : QString("%1 · %2 thr").arg(m_info.state).arg(m_info.threads);
    if (m_info.predictedMs >= 0)
        line2 += QString(" · %1 ms").arg(m_info.predictedMs, 0, 'f', m_info.predictedMs < 10 ? 2 : 1);
    p.drawText(QRect(8, 17, hw - 12, 14), Qt::AlignLeft | Qt::AlignVCenter, p.fontMetrics().elidedText(line2, Qt::ElideRight, hw - 12));
    // Memory: this placement's need against what is usable there.
    const QRectF bar(8, H - 12, hw - 16, 7);
    p.setPen(Qt::NoPen);
    p.setBrush(QColor("#dddddd"));
    p.drawRoundedRect(bar, 2, 2);
    if (m_info.usableBytes && m_info.needBytes) {
        const double f = std::min(1.0, static_cast<double>(m_info.needBytes) / static_cast<double>(m_info.usableBytes));
        p.setBrush(m_info.overMemory ? statusColor(Status::Error) : accentColor());
        p.drawRoundedRect(QRectF(bar.x(), bar.y(), std::max(2.0, bar.width() * f), bar.height()), 2, 2);
    }
    p.setPen(QColor("#c8c8c8"));
    p.drawLine(hw - 1, 2, hw - 1, H - 3);

    // The track: embedding and head where this lane leads the first and last stage; hatched cells where it is
    // a further tensor-parallel rank.
    const Plan& plan = m_canvas.plan();
    const double cw = m_canvas.cellWidth();
    const QRectF cellBase(0, 6.5, cw - 3, H - 13);
    for (size_t s = 0; s < plan.stages.size(); ++s) {
        const auto& st = plan.stages[s];
        for (size_t r = 0; r < st.ranks.size(); ++r) {
            if (st.ranks[r].worker != m_info.address)
                continue;
            const QColor c = m_canvas.stageColour(static_cast<int>(s));
            if (r > 0)
                for (int64_t l = st.firstLayer; l <= st.lastLayer && l < m_canvas.layers(); ++l) {
                    QRectF cell = cellBase.translated(m_canvas.columnX(l) + 1.5, 0);
                    p.setPen(QPen(c.darker(140), 1));
                    p.setBrush(QBrush(c, Qt::BDiagPattern));
                    p.drawRoundedRect(cell, 3, 3);
                }
            auto endCell = [&](int64_t column, const QString& label) {
                QRectF cell = cellBase.translated(m_canvas.columnX(column) + 1.5, 0);
                p.setPen(QPen(c.darker(150), 1, Qt::DashLine));
                p.setBrush(r == 0 ? c.lighter(130) : QBrush(c.lighter(130), Qt::BDiagPattern));
                p.drawRoundedRect(cell, 3, 3);
                p.setPen(QColor("#333"));
                p.setFont(small);
                p.drawText(cell, Qt::AlignCenter, cw < 30 ? label.left(1) : label);
            };
            if (s == 0)
                endCell(-1, "emb");
            if (s + 1 == plan.stages.size())
                endCell(m_canvas.layers(), "head");
            if (r > 0 && cw >= 20) {
                p.setPen(QColor("#333"));
                p.setFont(small);
                const QRectF span(m_canvas.columnX(st.firstLayer), 0, m_canvas.columnX(st.lastLayer + 1) - m_canvas.columnX(st.firstLayer), H);
                p.drawText(span, Qt::AlignCenter, QString("TP rank %1").arg(r));
            }
        }
    }
}

void Lane::mousePressEvent(QMouseEvent* e)
{
    m_pressAt = e->position().toPoint();
    m_pressed = e->button() == Qt::LeftButton;
}

void Lane::mouseMoveEvent(QMouseEvent* e)
{
    if (!m_pressed || !(e->buttons() & Qt::LeftButton))
        return;
    if ((e->position().toPoint() - m_pressAt).manhattanLength() < QApplication::startDragDistance())
        return;
    m_pressed = false;
    m_canvas.startLaneDrag(this, m_pressAt);
}

} // namespace together::gui
