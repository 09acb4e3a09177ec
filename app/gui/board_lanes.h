// SPDX-License-Identifier: MIT
#pragma once

#include <QColor>
#include <QPoint>
#include <QPushButton>
#include <QWidget>

#include <cstdint>
#include <string>

namespace together::gui {

class BoardCanvas;

// One machine's row on the board, as the canvas draws it.
struct LaneInfo {
    std::string address;  // host:port (the lane's accessible name)
    QString state;        // "ready", "busy: …"
    bool ready = false;
    int threads = 1;      // what a new rank there gets
    uint64_t needBytes = 0;   // this plan's shards there: weights, KV cache, runtime
    uint64_t usableBytes = 0; // free, capped by what it donates (0: unknown)
    bool overMemory = false;  // its need (or its host's) exceeds what is there
    double predictedMs = -1;  // the cost model's time per token in the stages it runs (compute and all-reduce)
};

// A layer block: "Layer N", a real widget (so screen readers and test drivers find it with its extents).
// Click selects it (Ctrl adds, Shift extends), drag moves it (with the selection when it is selected),
// arrows move the focus along the layers, Space selects, the context menu assigns.
class LayerBlock : public QPushButton {
    Q_OBJECT
public:
    LayerBlock(BoardCanvas& canvas, int64_t layer, QWidget* parent);
    int64_t layer() const { return m_layer; }
    void setLook(const QColor& colour, bool selected, const QString& tip);

protected:
    void paintEvent(QPaintEvent*) override;
    void mousePressEvent(QMouseEvent*) override;
    void mouseMoveEvent(QMouseEvent*) override;
    void mouseReleaseEvent(QMouseEvent*) override;
    void keyPressEvent(QKeyEvent*) override;
    void contextMenuEvent(QContextMenuEvent*) override;
    void nextCheckState() override {} // the canvas keeps the selection

private:
    BoardCanvas& m_canvas;
    int64_t m_layer;
    QColor m_colour;
    QPoint m_pressAt;
    bool m_dragging = false;
};

// A machine's lane: its address, state, threads and memory fill on the left, the layers it runs on the right
// (blocks for the stages it leads, hatched cells where it is a further tensor-parallel rank). Dragging the
// address starts a machine drag (drop it on a stage to add a rank); dragging a hatched cell drags that rank
// off its stage.
class Lane : public QWidget {
    Q_OBJECT
public:
    Lane(BoardCanvas& canvas, QWidget* parent);
    void setInfo(const LaneInfo& info);
    const LaneInfo& info() const { return m_info; }

protected:
    void paintEvent(QPaintEvent*) override;
    void mousePressEvent(QMouseEvent*) override;
    void mouseMoveEvent(QMouseEvent*) override;

private:
    BoardCanvas& m_canvas;
    LaneInfo m_info;
    QPoint m_pressAt;
    bool m_pressed = false;
};

} // namespace together::gui
