// SPDX-License-Identifier: MIT
#pragma once

#include "base/process.h"
#include "master/controller.h"
#include "master/cost_model.h"
#include "master/local_daemons.h"
#include "model/model_config.h"
#include "model/plan.h"
#include "net/discovery.h"

#include <QMetaType>
#include <QObject>
#include <QString>
#include <QThreadPool>

#include <map>
#include <memory>
#include <optional>

namespace together {
class Tokenizer;
class Credentials;
}

namespace together::gui {

// What the app knows and drives, without widgets: the cluster key, local worker daemons, discovery, the model,
// the placement and the controller. Everything that waits (starting daemons, Hellos, surveys, reading a model,
// the controller's work) runs on other threads; results come back as signals on the GUI thread, so a slot may
// touch widgets. Tests drive it directly, and through the widgets.
class AppSession : public QObject {
    Q_OBJECT
public:
    explicit AppSession(QObject* parent = nullptr);
    ~AppSession() override; // stops the shards and the local daemons (on this thread: the app is closing)

    // The cluster key file ($config/cluster.key unless given), made (0600) when it does not exist yet.
    // Throws Error naming the file when it cannot be read.
    void useKeyFile(const QString& path);
    QString keyFile() const { return m_keyFile; }
    QString keyText() const { return m_keyText; }
    QString keyFingerprint() const { return m_keyFingerprint; }
    // A new key in the same file (the old one kept beside it as FILE.old). Workers need it typed again.
    void replaceKey();

    // Workers. Discovery listens for beacons unless `broadcast` is false (local workers only).
    void startDiscovery(bool broadcast);
    void startLocalWorkers(int count, const std::vector<std::string>& daemonArgs = {}); // async: localWorkersStarted or failure
    std::vector<std::string> localWorkers() const;
    bool startingLocalWorkers() const { return m_localStarting; }
    pid_t localWorkerPid(const std::string& address) const;
    void addWorker(const QString& address); // throws Error on a malformed address; remembered unless local
    std::vector<DiscoveredWorker> workers() const;
    std::vector<std::string> readyWorkers() const;
    void fetchLog(const QString& address); // async: workerLog

    // The model: config and tokenizer read on another thread.
    void openModel(const QString& dir); // async: modelOpened or modelFailed
    void openDefaultModel();            // the built-in random model, written once (async)
    bool hasModel() const { return m_tokenizer != nullptr; }
    QString modelDir() const { return m_modelDir; }
    const ModelConfig& config() const { return m_config; }
    std::shared_ptr<const Tokenizer> tokenizer() const { return m_tokenizer; }
    // The token ids to feed for the next answer of `c` (promptIds in conversation.h, with this model's tokenizer).
    // Throws Error when no model is open or the prompt cannot be built.
    std::vector<int> promptIds(const struct Conversation& c, bool continueLast) const;
    bool modelHasChatTemplate() const { return m_hasChatTemplate; }
    // The run format the open model gets unless one is chosen: q8 for a GGUF file of quantized weights.
    const QString& modelDefaultDtype() const { return m_defaultDtype; }
    // The ids that end an answer (generation_config.json, else config.json).
    const std::vector<int64_t>& eosIds() const { return m_eosIds; }

    // The placement: proposed by the cost model over the ready workers, or set.
    void proposePlacement(const QString& dtype, int64_t context); // async: placementProposed or placementFailed
    void setPlan(const Plan& plan, const QString& why = {});
    const Plan& plan() const { return m_plan; }
    bool hasPlan() const { return !m_plan.stages.empty(); }
    const std::optional<Prediction>& prediction() const { return m_prediction; }
    QString predictionNote() const { return m_predictionNote; } // why there is no prediction
    // The dtype and context length predictions and memory estimates assume (the Placement pane's).
    void setPlanOptions(const QString& dtype, int64_t context);
    // The cost model's prediction for `plan`; `links` replaces the measured links (what-if). Empty, with
    // `why`, when a machine of the plan has not been measured or the plan is not valid.
    std::optional<Prediction> predictPlan(const Plan& plan, const LinkTable* links = nullptr, QString* why = nullptr) const;
    // What stops `plan` from being launched ("" when nothing): the plan's own checks against the model, and
    // every machine it names known and ready.
    QString planProblem(const Plan& plan) const;
    // The threads a new rank on `worker` gets: what the plan already gives it, else what it donates.
    int defaultThreads(const std::string& worker) const;
    // The threads `worker` donates that `plan` leaves free, not counting stage `skipStage` (0 or less: none).
    int spareThreads(const Plan& plan, const std::string& worker, int skipStage = -1) const;
    bool measured(const std::string& worker) const; // surveyed: the cost model can predict with it
    // Memory each worker of the plan would need at `dtype` and `context` (weights, KV cache, runtime).
    std::map<std::string, uint64_t> plannedBytes(const QString& dtype, int64_t context) const;
    std::map<std::string, uint64_t> plannedBytes(const Plan& plan, const QString& dtype, int64_t context) const;
    // "" or the first worker that would not have the memory, with the numbers.
    QString memoryShortfall(const QString& dtype, int64_t context) const;

    // The controller (after a model is open). Events arrive as controllerEvent on the GUI thread.
    void launch(const QString& dtype, int64_t context, bool force, bool failover = false);
    // Launches another placement in place of the running one (a bench's variant; the board's plan stays), and
    // the last launch() again.
    void launchPlan(const Plan& plan);
    void relaunch();
    void generate(const GenerateRequest& request);
    void stop();
    void cancel();
    void unload();
    bool launched() const { return m_launched; }
    Controller* controller() { return m_controller.get(); }
    std::shared_ptr<const Credentials> credentials() const { return m_credentials; }

Q_SIGNALS:
    void status(const QString& text);
    void workerUpdated(const together::DiscoveredWorker& worker);
    void workersReset(); // discovery started again (a new key): the list is rebuilt from scratch
    void localWorkersStarted(int count);
    void localWorkersFailed(const QString& why);
    void workerLog(const QString& address, const QString& text);
    void modelOpened(const QString& dir);
    void modelFailed(const QString& dir, const QString& why);
    void placementProposed(const QString& explanation);
    void placementFailed(const QString& why);
    void planChanged();
    void controllerEvent(const together::ControllerEvent& event);
    void keyChanged();
    // The controller was replaced (another model, another key) with work possibly in flight: no event of the
    // old one arrives any more, so whoever waits for one stops waiting.
    void controllerReset();

private:
    // Runs `work` on the pool; `done` (if any) then runs on the GUI thread with its result.
    void background(std::function<void()> work);
    void post(std::function<void()> onGuiThread);
    void makeController();
    void dropController();

    QThreadPool m_pool;
    QString m_keyFile;
    QString m_keyText, m_keyFingerprint; // of the key in use (the file is read once)
    std::shared_ptr<const Credentials> m_credentials;
    std::shared_ptr<LocalDaemons> m_local;
    std::unique_ptr<Discovery> m_discovery;
    bool m_broadcast = false;
    bool m_localStarting = false;
    std::vector<std::string> m_localArgs; // what the local daemons were started with

    QString m_modelDir;
    ModelConfig m_config;
    std::shared_ptr<const Tokenizer> m_tokenizer;
    bool m_hasChatTemplate = false;
    QString m_defaultDtype;
    std::vector<int64_t> m_eosIds;
    uint64_t m_modelEpoch = 0;

    Plan m_plan;
    std::optional<Prediction> m_prediction;
    QString m_predictionNote;
    QString m_planDtype = "bf16";
    int64_t m_planContext = 0;
    std::vector<MachineProfile> m_profiles; // from the last survey
    LinkTable m_links;

    std::unique_ptr<Controller> m_controller;
    std::optional<LaunchRequest> m_lastLaunch; // what launch() asked for last
    uint64_t m_controllerEpoch = 0;
    bool m_launched = false;
};

} // namespace together::gui

Q_DECLARE_METATYPE(together::DiscoveredWorker)
Q_DECLARE_METATYPE(together::ControllerEvent)
