// SPDX-License-Identifier: MIT
#pragma once

#include "session/settings.h"

#include <QMainWindow>
#include <QString>

#include <string>
#include <vector>

class QAction;
class QDockWidget;
class QLabel;
class QTimer;

namespace together {
struct ControllerEvent;
}

namespace together::gui {

class AppSession;
class ChartsPane;
class PerformancePane;
class ChatPane;
class LaunchPane;
class MachinesPane;

struct StartOptions {
    QString model;        // --model DIR ("" = the last used, else the built-in random model)
    int localWorkers = 0; // --local-workers N: daemons on this machine, each standing for a machine
    QString keyFile;      // --key-file K ("" = the one in settings, else $config/cluster.key)
    QString plan;         // --plan F (else a proposal from the cost model)
    QString dtype;        // --dtype ("" = settings)
    bool broadcast = true; // --no-broadcast: only workers added by address (and local ones)
    std::vector<std::string> localWorkerArgs; // given to each local daemon (tests: --max-memory)
};

// The app's window: Machines and Placement on the left, the Chat in the middle, Charts and Performance below.
// Window layout, dock state and options persist in the settings file (session/settings.h).
class MainWindow : public QMainWindow {
    Q_OBJECT
public:
    explicit MainWindow(const StartOptions& options, QWidget* parent = nullptr);
    ~MainWindow() override;

    AppSession& session() { return *m_session; }
    ChatPane& chat() { return *m_chat; }
    LaunchPane& launchPane() { return *m_launch; }
    MachinesPane& machines() { return *m_machines; }
    ChartsPane& charts() { return *m_charts; }
    PerformancePane& performance() { return *m_performance; }
    QLabel* banner() { return m_banner; }
    void openModel(const QString& dir);
    void showKeyDialog();
    void browseModels();

protected:
    void closeEvent(QCloseEvent* event) override;

private:
    // The constructor's parts, in the order it runs them.
    void buildCentre();      // the chat, under the banner
    void buildDocks();       // machines and placement on the left, charts and performance below
    QAction* buildToolBar(); // its "Open model folder…" is the launch pane's too
    void connectPanes(QAction* openAct);
    void connectSession();
    void restoreSettings();  // the options and the window's layout, from the settings file
    void startSession();     // the key, the workers, the model
    void onControllerEvent(const ControllerEvent& e);
    QDockWidget* dock(const QString& name, QWidget* content, Qt::DockWidgetArea area);
    void onModelOpened(const QString& dir);
    void maybePropose();
    void saveSettings();     // the window's and the panes' state, at close
    void saveSettingsFile(); // what was set, now (a failure is shown in the status bar)
    void loadPlanFile();
    uint64_t availableBytes() const;

    StartOptions m_options;
    Settings m_settings;
    AppSession* m_session;
    MachinesPane* m_machines;
    LaunchPane* m_launch;
    ChatPane* m_chat;
    ChartsPane* m_charts;
    PerformancePane* m_performance;
    QLabel* m_banner;
    QTimer* m_proposeTimer;
    bool m_proposing = false;
    bool m_planLoaded = false;
};

} // namespace together::gui
