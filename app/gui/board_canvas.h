// SPDX-License-Identifier: MIT
#pragma once

#include "gui/board_lanes.h"
#include "model/plan.h"

#include <QWidget>

#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

class QMimeData;

namespace together::gui {

// The lanes and blocks, laid out as a grid (one column per layer, embedding and head at the ends), and the one
// drop target of every drag on the board.
class BoardCanvas : public QWidget {
    Q_OBJECT
public:
    static constexpr int kHeaderWidth = 176;
    static constexpr int kLaneHeight = 46;

    explicit BoardCanvas(QWidget* parent = nullptr);

    void setLayers(int64_t numLayers);
    void show(const Plan& plan, const std::vector<LaneInfo>& lanes);
    // What a candidate plan would break ("" when nothing), given the machine it puts work on.
    void setCheck(std::function<QString(const Plan&, const std::string& target)> check) { m_check = std::move(check); }
    void setReadOnly(const QString& why) { m_readOnly = why; } // "": editable
    // Adjusts a candidate before it is checked (the target's threads to what it has left).
    void setFit(std::function<void(Plan&, const std::string& target)> fit) { m_fit = std::move(fit); }

    const Plan& plan() const { return m_plan; }
    int64_t layers() const { return m_layers; }
    LayerBlock* block(int64_t layer) const;
    Lane* lane(const std::string& address) const;
    const std::vector<Lane*>& lanes() const { return m_lanes; }

    // Selection (layer indices).
    const std::set<int64_t>& selection() const { return m_selected; }
    void select(int64_t layer, Qt::KeyboardModifiers modifiers);
    void setSelection(const std::set<int64_t>& layers);
    void focusLayer(int64_t layer, bool extend);

    // The drags' payloads (also what tests feed to drop events).
    static QMimeData* layersMime(const std::vector<int64_t>& layers);
    static QMimeData* workerMime(const std::string& address);
    static QMimeData* rankMime(const std::string& worker, int stage);
    std::vector<int64_t> dragLayersFor(int64_t pressed) const; // the selection when `pressed` is in it

    void startLayerDrag(LayerBlock* from);
    void startLaneDrag(Lane* from, QPoint at);

    // Geometry shared with the lanes.
    double cellWidth() const;
    int columnX(int64_t column) const; // column -1: embedding, layers(): head
    int64_t columnAt(int x) const;     // -2: the header, -1 embedding, layers(): head
    QColor stageColour(int stage) const;
    // Where a drop at `pos` would land: the lane and the layer column there.
    Lane* laneAt(QPoint pos) const;

    // The board's operations (the keyboard path and the drops use them). They emit edited() or refused().
    void assignTo(const std::vector<int64_t>& layers, const std::string& worker);
    void addRankTo(int stage, const std::string& worker);
    void removeRankFrom(int stage, const std::string& worker);

    QSize sizeHint() const override;
    QSize minimumSizeHint() const override;

Q_SIGNALS:
    void edited(const together::Plan& plan, const QString& what);
    void refused(const QString& why);
    void hint(const QString& text); // while a drag hovers: what a drop here would do, or why not
    void selectionChanged();
    void contextMenuRequested(QPoint globalPos);

protected:
    void resizeEvent(QResizeEvent*) override;
    void paintEvent(QPaintEvent*) override;
    void dragEnterEvent(QDragEnterEvent*) override;
    void dragMoveEvent(QDragMoveEvent*) override;
    void dragLeaveEvent(QDragLeaveEvent*) override;
    void dropEvent(QDropEvent*) override;

private:
    struct Candidate {
        std::optional<Plan> plan;
        QString what;  // "Layer 4 to host:port"
        QString why;   // why not
        std::string target;
    };
    Candidate candidate(const QMimeData* mime, QPoint pos) const;
    Candidate checked(Candidate c) const;
    void relayout();
    void restyle();
    void finish(const Candidate& c);

    Plan m_plan;
    int64_t m_layers = 0;
    std::vector<LayerBlock*> m_blocks;
    std::vector<Lane*> m_lanes;
    std::set<int64_t> m_selected;
    int64_t m_anchor = -1;
    std::function<QString(const Plan&, const std::string&)> m_check;
    std::function<void(Plan&, const std::string&)> m_fit;
    QString m_readOnly;
    Lane* m_dropLane = nullptr;
    bool m_dropOk = false;

    friend class Lane;
};

} // namespace together::gui
