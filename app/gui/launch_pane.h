// SPDX-License-Identifier: MIT
#pragma once

#include "master/controller.h"

#include <QWidget>

#include <vector>

class QCheckBox;
class QComboBox;
class QGroupBox;
class QLabel;
class QMessageBox;
class QProgressBar;
class QPushButton;
class QSpinBox;
class QVBoxLayout;

namespace together::gui {

class AppSession;
class PlacementBoard;

// The Placement pane (this release: the model, the proposed placement with its prediction and reasons, and the
// launch): one Launch button with dtype and context length, a progress bar per rank through the phases,
// cancel and unload, and the memory warning with "Launch anyway".
class LaunchPane : public QWidget {
    Q_OBJECT
public:
    LaunchPane(AppSession& session, QWidget* parent = nullptr);

    QString dtype() const;
    int64_t context() const;
    void setDtype(const QString& dtype);
    void setContext(int64_t context);
    void onControllerEvent(const ControllerEvent& e);
    void refresh(); // model, plan and buttons from the session
    void setExplanation(const QString& text);
    void setProposing(bool on);
    void controllerReset(); // the model was closed: no launch is in flight any more

    PlacementBoard* board() { return m_board; }
    QPushButton* launchButton() { return m_launch; }
    QCheckBox* failoverBox() { return m_failover; }
    QPushButton* cancelButton() { return m_cancel; }
    QPushButton* unloadButton() { return m_unload; }
    QMessageBox* memoryWarning() { return m_warning; } // while one is shown
    std::vector<QProgressBar*> progressBars() const { return m_bars; }
    QString statusText() const;

    void launch(bool force = false);
    bool launching() const { return m_launching; }
    void setBusy(const QString& why); // a bench or Verify owns the workers: Launch waits ("": free again)

Q_SIGNALS:
    void openModelRequested();
    void browseModelsRequested();
    void proposeRequested();

private:
    void warnMemory(const QString& numbers);
    void setStatus(const QString& text, bool error = false);

    AppSession& m_session;
    QLabel* m_model;
    QLabel* m_prediction;
    QLabel* m_explanation;
    QComboBox* m_dtype;
    QSpinBox* m_context;
    QCheckBox* m_failover;
    PlacementBoard* m_board;
    QPushButton* m_launch;
    QPushButton* m_cancel;
    QPushButton* m_unload;
    QLabel* m_status;
    QGroupBox* m_progress;
    QVBoxLayout* m_progressLayout;
    std::vector<QProgressBar*> m_bars;
    std::vector<QLabel*> m_barLabels;
    QMessageBox* m_warning = nullptr;
    bool m_launching = false;
    bool m_forced = false; // the launch in flight was "Launch anyway"
    bool m_proposing = false;
    QString m_busy;
    std::string m_explained; // the plan the explanation is about
    QString m_explainedText;
};

} // namespace together::gui
