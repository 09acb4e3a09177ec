// SPDX-License-Identifier: MIT
#pragma once

#include "base/files.h"
#include "common/bench_table.h"
#include "master/controller.h"

#include <QWidget>

#include <functional>
#include <memory>
#include <vector>

class QCheckBox;
class QLabel;
class QProcess;
class QProgressBar;
class QPushButton;
class QSpinBox;
class QTableWidget;

namespace together::gui {

class AppSession;

// The Performance pane: this session's runs (each chat reply) and benches as a table with the columns of
// `together-cli bench`; "Bench" measures the launched placement (a fixed prompt, greedy decode steps that no
// end-of-sequence token stops) with progress; "Verify" runs the controller's check of the placement against
// one machine (`together-cli verify`) and shows the verdict; "Export" writes CSV, Markdown (with the original
// together-LLM table layout) or the charts as PNG.
class PerformancePane : public QWidget {
    Q_OBJECT
public:
    PerformancePane(AppSession& session, QWidget* parent = nullptr);
    ~PerformancePane() override; // stops a Verify in flight (its shards with it)

    // What else owns the controller or the workers now ("" when nothing): a chat answer streaming, a launch.
    void setBusyCheck(std::function<QString()> busy) { m_busy = std::move(busy); }
    void onControllerEvent(const ControllerEvent& e);
    // A chat reply finished: one row, its split filled once the ranks' records are in.
    void addChatRun(int promptTokens, int tokens, double ttftMs, double tokensPerSecond);
    void setChartsSaver(std::function<QString(const QString& prefix)> save) { m_saveCharts = std::move(save); }
    void refresh(); // buttons from the session's state

    void bench();
    void verify();
    bool benching() const { return m_benchStage != BenchStage::Idle; }
    bool verifying() const { return m_verify != nullptr || m_verifyAfterUnload; }
    QString verdict() const;
    const std::vector<BenchRow>& rows() const { return m_rows; }
    // Writes the rows: PATH ending in .csv as CSV, .md as Markdown, .png the charts (PREFIX-*.png).
    QString exportTo(const QString& path); // "" or why not

    QPushButton* benchButton() { return m_bench; }
    QCheckBox* variantsBox() { return m_variantsBox; }
    QStringList failures() const { return m_failures; }
    QPushButton* verifyButton() { return m_verifyButton; }
    QPushButton* exportButton() { return m_export; }
    QTableWidget* table() { return m_table; }

Q_SIGNALS:
    void benchRunning(bool on);  // the chat waits while a bench owns the controller
    void verifyRunning(bool on); // Launch waits while Verify runs shards on the same workers

private:
    enum class BenchStage { Idle, Launching, WarmUp, Measure, Relaunching };
    struct Variant {
        std::string label; // the table's "placement"
        Plan plan;
    };
    std::vector<Variant> variantsOf(const Plan& current); // the ones a model does not allow go to m_failures
    void startWarmUp();
    void nextVariant();
    BenchRow baseRow(const Plan& plan) const;
    void addRow(const BenchRow& row);
    void fillSplit(size_t index, int attempt);
    void verifyEnded(const QString& verdict, bool same);
    void resumeVerifyAfterUnload();
    void showRow(size_t index);
    void finishBench(const QString& message, bool error);

    AppSession& m_session;
    QTableWidget* m_table;
    QSpinBox* m_promptTokens;
    QSpinBox* m_decodeTokens;
    QPushButton* m_bench;
    QCheckBox* m_variantsBox;
    QPushButton* m_verifyButton;
    QPushButton* m_export;
    QProgressBar* m_progress;
    QLabel* m_status;
    QLabel* m_verdict;
    std::vector<BenchRow> m_rows;
    std::function<QString(const QString&)> m_saveCharts;
    std::function<QString()> m_busy;

    BenchStage m_benchStage = BenchStage::Idle;
    std::vector<Variant> m_variants;
    size_t m_variant = 0;
    int m_measured = 0;
    QStringList m_failures; // variants that could not be measured, with why
    int m_benchTokens = 0;
    int m_benchRuns = 0;
    qint64 m_benchStartNs = 0, m_firstTokenNs = 0, m_lastTokenNs = 0;
    QProcess* m_verify = nullptr;
    bool m_verifyAfterUnload = false;
    std::unique_ptr<TempDir> m_verifyDir; // the plan file the check reads (removed with it)
    QString m_verifyPlan;
    QString m_verifyOutput;
};

} // namespace together::gui
