// SPDX-License-Identifier: MIT
#pragma once

#include "model/plan.h"

#include <QPushButton>
#include <QWidget>

#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

class QComboBox;
class QLabel;
class QMenu;
class QMimeData;
class QScrollArea;
class QTabWidget;
class QTableWidget;
class QUndoStack;

namespace together::gui {

class AppSession;
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

// The placement editor: the board and a per-stage table (two equal ways to the same plan), "Auto place",
// the keyboard menus ("Assign to…", "Add to stage…", "Remove from stage…"), undo and redo, the plan's check
// and the what-if prediction over named link profiles, plan files.
class PlacementBoard : public QWidget {
    Q_OBJECT
public:
    PlacementBoard(AppSession& session, QWidget* parent = nullptr);
    ~PlacementBoard() override;

    void refresh();               // from the session's plan, workers and options
    void setLaunchOptions(const QString& dtype, int64_t context);
    void setLocked(const QString& why); // "" to edit again
    void apply(const Plan& plan, const QString& what); // an edit: undoable
    QString problem() const { return m_problem; }       // what stops a launch ("" when nothing)

    BoardCanvas* canvas() { return m_canvas; }
    QTableWidget* table() { return m_table; }
    QUndoStack* undoStack() { return m_undo; }
    QPushButton* autoPlaceButton() { return m_autoPlace; }
    QComboBox* whatIfBox() { return m_whatIf; }
    QString checkText() const;
    QString whatIfText() const;
    QString lastMessage() const { return m_lastMessage; }

    // Plan files, as the CLI's --plan reads them.
    QString savePlan(const QString& path) const; // "" or why not
    QString loadPlan(const QString& path);       // "" or why not

    // The keyboard path's menus (also on the buttons).
    void showAssignMenu(QPoint globalPos);
    void showAddMenu(QPoint globalPos);
    void showRemoveMenu(QPoint globalPos);

Q_SIGNALS:
    void autoPlaceRequested();
    void dtypeFromPlan(const QString& dtype);
    void lockChanged();

private:
    // The menus' entries, shared by the buttons and the board's context menu.
    void fillAssignMenu(QMenu& menu);
    void fillAddMenu(QMenu& menu);
    void fillRemoveMenu(QMenu& menu);
    void fillTable();
    void tableEdited();
    void showMessage(const QString& text, bool error);
    int selectedStage() const;
    std::vector<LaneInfo> laneInfos() const;

    AppSession& m_session;
    BoardCanvas* m_canvas;
    QTableWidget* m_table;
    QTabWidget* m_tabs;
    QScrollArea* m_scroll;
    QUndoStack* m_undo;
    QPushButton* m_autoPlace;
    QPushButton* m_assign;
    QPushButton* m_add;
    QPushButton* m_remove;
    QComboBox* m_whatIf;
    QLabel* m_check;
    QLabel* m_whatIfLine;
    QLabel* m_message;
    QString m_problem;
    QString m_lastMessage;
    QString m_dtype = "bf16";
    int64_t m_context = 0;
    QString m_locked;
    Plan m_shown;          // the plan on the board: a change the board did not make becomes an undo step too
    bool m_applying = false;
    bool m_filling = false;
    bool m_messageIsHint = false; // the message line shows a drag's hover hint, not an edit's result
};

} // namespace together::gui
