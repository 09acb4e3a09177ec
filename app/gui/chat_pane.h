// SPDX-License-Identifier: MIT
#pragma once

#include "master/controller.h"
#include "session/conversation.h"

#include <QElapsedTimer>
#include <QWidget>

class QCheckBox;
class QComboBox;
class QDoubleSpinBox;
class QHBoxLayout;
class QLabel;
class QLineEdit;
class QPlainTextEdit;
class QProgressBar;
class QPushButton;
class QSpinBox;
class QTextBrowser;
class QTimer;

namespace together::gui {

class AppSession;

// The Chat pane: a multi-turn conversation in the model's chat template, or Complete mode for base models,
// streamed as the tokens come; stop, continue, regenerate; copy, edit and delete on each message; speed kept
// under each reply; conversations saved to a file and restored at the next start.
class ChatPane : public QWidget {
    Q_OBJECT
public:
    ChatPane(AppSession& session, const QString& storePath, QWidget* parent = nullptr);
    ~ChatPane() override;

    // After a model opens: Complete mode is the default where the model has no chat template.
    void modelChanged(bool hasChatTemplate);
    void onControllerEvent(const ControllerEvent& e);
    void setLaunched(bool launched);
    // The controller in flight was replaced (another model, another key): no event will end the answer.
    void controllerReset();

    // For tests and the app's own wiring.
    const Conversation& conversation() const;
    bool generating() const { return m_generating; }
    QTextBrowser* transcript() { return m_transcript; }
    QPlainTextEdit* input() { return m_input; }
    QString transcriptText() const;
    void save() const;

    QCheckBox* completeBox() { return m_complete; }
    QDoubleSpinBox* temperatureBox() { return m_temperature; }
    QSpinBox* maxTokensBox() { return m_maxTokens; }
    QPushButton* sendButton() { return m_send; }
    QPushButton* newChatButton() { return m_newChat; }
    QPushButton* stopButton() { return m_stop; }
    QPushButton* continueButton() { return m_continue; }
    QPushButton* regenerateButton() { return m_regenerate; }

    void send();
    void stop();
    void continueAnswer();
    void regenerate();
    void newChat();

Q_SIGNALS:
    void answerFinished(); // an answer ended (any way)
    void answerStarted();

private:
    // The constructor's parts, top to bottom.
    QHBoxLayout* makeTopRow();      // the chats, the seed, New chat
    QHBoxLayout* makeSettingsRow(); // Complete and the sampling settings
    QWidget* makeSystemRow();
    QHBoxLayout* makeMessageRow();  // the message and the Send, Stop, Continue and Regenerate buttons
    void startTimers();             // the transcript's redraw and the prefill's progress
    void connectControls();

    Conversation& conv();
    // Drops trailing notices; whether the conversation now ends with an answer that can go on or be redone.
    bool atLastAnswer();
    void start(bool continueLast);
    void render();
    void scheduleRender();
    void linkClicked(const QUrl& url);
    void updateButtons();
    void switchTo(int index);
    void refreshChats();
    void finishAnswer();
    bool eventFilter(QObject* watched, QEvent* event) override;

    AppSession& m_session;
    QString m_storePath;
    ConversationStore m_store;

    QComboBox* m_chats;
    QPushButton* m_newChat;
    QWidget* m_systemRow;
    QLineEdit* m_system;
    QCheckBox* m_complete;
    QDoubleSpinBox* m_temperature;
    QDoubleSpinBox* m_topP;
    QSpinBox* m_maxTokens;
    QSpinBox* m_seed;
    QTextBrowser* m_transcript;
    QProgressBar* m_prefill;
    QLabel* m_live;
    QPlainTextEdit* m_input;
    QPushButton* m_send;
    QPushButton* m_stop;
    QPushButton* m_continue;
    QPushButton* m_regenerate;
    QTimer* m_renderTimer;
    QTimer* m_prefillTimer;

    bool m_launched = false;
    bool m_generating = false;
    bool m_follow = true;    // auto-scroll: off while the user has scrolled up
    bool m_scrolling = false; // our own scroll moves
    QElapsedTimer m_clock;    // since the request
    QElapsedTimer m_saveClock; // since the conversation was last saved while streaming
    double m_firstTokenMs = -1;
    double m_lastTokenMs = -1;
    int m_streamed = 0;
    int m_feeding = 0;           // tokens to prefill for the answer in flight
    double m_prefillRate = 400;  // tokens/s, measured by the last answer
    std::vector<int> m_held;     // what the shards were last fed (the prompt and the answer)
    int m_answer = -1;           // the message the answer in flight goes to
};

} // namespace together::gui
