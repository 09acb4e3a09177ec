// SPDX-License-Identifier: MIT
#pragma once

#include "gui/board_canvas.h"
#include "model/plan.h"

#include <QPushButton>
#include <QWidget>

#include <string>
#include <vector>

class QComboBox;
class QHBoxLayout;
class QLabel;
class QMenu;
class QScrollArea;
class QTabWidget;
class QTableWidget;
class QUndoStack;

namespace together::gui {

class AppSession;
class StagesTable;

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
    QTableWidget* table();
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
    // The constructor's parts, each built whole before it joins the layout, in the layout's order (which is
    // also the focus order).
    QHBoxLayout* makeTools();              // Auto place and the keyboard path's menus
    QWidget* makeCorner();                 // undo, redo and plan files, in the tabs' corner
    QTabWidget* makeTabs(QWidget* corner); // the board (scrolled) and the stages table
    QHBoxLayout* makeWhatIf();             // the what-if links and their prediction
    void checkCandidates();                // how the canvas fits and checks an edit before it makes it
    void connectParts();

    // The menus' entries, shared by the buttons and the board's context menu.
    void fillAssignMenu(QMenu& menu);
    void fillAddMenu(QMenu& menu);
    void fillRemoveMenu(QMenu& menu);
    void showMessage(const QString& text, bool error);
    int selectedStage() const;
    std::vector<LaneInfo> laneInfos() const;

    AppSession& m_session;
    BoardCanvas* m_canvas;
    StagesTable* m_stages;
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
    bool m_messageIsHint = false; // the message line shows a drag's hover hint, not an edit's result
};

} // namespace together::gui
