// SPDX-License-Identifier: MIT
#include "gui/chat_pane.h"

#include "model/model_config.h"
#include "session/app_session.h"
#include "session/theme.h"

#include <QApplication>
#include <QCheckBox>
#include <QClipboard>
#include <QComboBox>
#include <QDoubleSpinBox>
#include <QFormLayout>
#include <QGridLayout>
#include <QHBoxLayout>
#include <QInputDialog>
#include <QKeyEvent>
#include <QLabel>
#include <QLineEdit>
#include <QPlainTextEdit>
#include <QProgressBar>
#include <QPushButton>
#include <QScrollBar>
#include <QSpinBox>
#include <QTextBrowser>
#include <QTimer>
#include <QUrl>
#include <QVBoxLayout>

#include <random>

namespace together::gui {

namespace {
QLabel* labelFor(const QString& text, QWidget* buddy)
{
    auto* l = new QLabel(text);
    l->setBuddy(buddy);
    buddy->setAccessibleName(text);
    return l;
}

QString speedLine(const ChatMessage& m)
{
    QStringList parts;
    if (m.ttftMs >= 0)
        parts << QString("first token %1 ms").arg(m.ttftMs, 0, 'f', 0);
    if (m.tokensPerSecond > 0)
        parts << QString("%1 tokens/s").arg(m.tokensPerSecond, 0, 'f', 1) << QString("%1 ms/token").arg(m.msPerToken, 0, 'f', 1);
    if (m.tokens > 0)
        parts << QString("%1 tokens").arg(m.tokens);
    if (!m.end.isEmpty())
        parts << m.end;
    return parts.join(" · ");
}

size_t commonPrefix(const std::vector<int>& a, const std::vector<int>& b)
{
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n])
        ++n;
    return n;
}
} // namespace

ChatPane::ChatPane(AppSession& session, const QString& storePath, QWidget* parent)
    : QWidget(parent)
    , m_session(session)
    , m_storePath(storePath)
    , m_store(ConversationStore::load(storePath))
{
    auto* layout = new QVBoxLayout(this);
    layout->addLayout(makeTopRow());
    layout->addLayout(makeSettingsRow());
    layout->addWidget(makeSystemRow());
    m_transcript = new QTextBrowser;
    m_transcript->setObjectName("conversation");
    m_transcript->setAccessibleName("Conversation");
    m_transcript->setOpenLinks(false);
    m_transcript->setReadOnly(true);
    layout->addWidget(m_transcript, 1);
    m_prefill = new QProgressBar;
    m_prefill->setAccessibleName("Reading the prompt");
    m_prefill->setFormat("Reading the prompt: %p%");
    m_prefill->hide();
    layout->addWidget(m_prefill);
    m_live = new QLabel;
    m_live->setWordWrap(true); // a long error must not widen the window
    m_live->setTextInteractionFlags(Qt::TextSelectableByMouse);
    layout->addWidget(m_live);
    layout->addLayout(makeMessageRow());

    startTimers();
    connectControls();
    switchTo(m_store.current);
    if (!m_store.problem.isEmpty())
        m_live->setText(m_store.problem);
}

QHBoxLayout* ChatPane::makeTopRow()
{
    auto* top = new QHBoxLayout;
    m_chats = new QComboBox;
    m_chats->setMinimumContentsLength(12);
    top->addWidget(labelFor("Chats", m_chats));
    top->addWidget(m_chats, 1);
    // The seed sits up here: the settings row below would otherwise set the chat's (and the window's) width.
    m_seed = new QSpinBox;
    m_seed->setRange(-1, std::numeric_limits<int>::max());
    m_seed->setSpecialValueText("random");
    m_seed->setValue(-1);
    top->addWidget(labelFor("Seed", m_seed));
    top->addWidget(m_seed);
    m_newChat = new QPushButton("New chat");
    m_newChat->setAccessibleName("New chat");
    top->addWidget(m_newChat);
    return top;
}

QHBoxLayout* ChatPane::makeSettingsRow()
{
    auto* settings = new QHBoxLayout;
    m_complete = new QCheckBox("Complete");
    m_complete->setAccessibleName("Complete");
    m_complete->setToolTip("The reply continues the text you type (for base models); off: a chat in the model's template");
    settings->addWidget(m_complete);
    m_temperature = new QDoubleSpinBox;
    m_temperature->setRange(0, 2);
    m_temperature->setSingleStep(0.1);
    m_temperature->setDecimals(2);
    m_temperature->setValue(0.8);
    settings->addWidget(labelFor("Temperature", m_temperature));
    settings->addWidget(m_temperature);
    m_topP = new QDoubleSpinBox;
    m_topP->setRange(0.01, 1);
    m_topP->setSingleStep(0.05);
    m_topP->setValue(0.95);
    settings->addWidget(labelFor("Top-p", m_topP));
    settings->addWidget(m_topP);
    m_maxTokens = new QSpinBox;
    m_maxTokens->setRange(1, 32768);
    m_maxTokens->setValue(256);
    settings->addWidget(labelFor("Max tokens", m_maxTokens));
    settings->addWidget(m_maxTokens);
    settings->addStretch(1);
    return settings;
}

QWidget* ChatPane::makeSystemRow()
{
    // The system prompt only means something in chat mode: Complete hides it.
    m_systemRow = new QWidget;
    auto* sys = new QHBoxLayout(m_systemRow);
    sys->setContentsMargins(0, 0, 0, 0);
    m_system = new QLineEdit;
    m_system->setPlaceholderText("How the model should answer (chat mode)");
    sys->addWidget(labelFor("System prompt", m_system));
    sys->addWidget(m_system, 1);
    return m_systemRow;
}

QHBoxLayout* ChatPane::makeMessageRow()
{
    auto* bottom = new QHBoxLayout;
    m_input = new QPlainTextEdit;
    m_input->setObjectName("message");
    m_input->setAccessibleName("Message");
    m_input->setPlaceholderText("Message (Enter sends, Shift+Enter starts a new line)");
    m_input->setAccessibleDescription("Enter sends, Shift+Enter starts a new line");
    m_input->setMaximumHeight(70);
    m_input->setTabChangesFocus(true); // Tab leaves the message for the buttons, as in a form
    m_input->installEventFilter(this);
    bottom->addWidget(m_input, 1);
    auto* buttons = new QGridLayout; // two by two: the chat stays short enough to leave the charts their room
    m_send = new QPushButton("Send");
    m_send->setAccessibleName("Send");
    m_stop = new QPushButton("Stop");
    m_stop->setAccessibleName("Stop");
    m_continue = new QPushButton("Continue");
    m_continue->setAccessibleName("Continue");
    m_regenerate = new QPushButton("Regenerate");
    m_regenerate->setAccessibleName("Regenerate");
    buttons->addWidget(m_send, 0, 0);
    buttons->addWidget(m_stop, 0, 1);
    buttons->addWidget(m_continue, 1, 0);
    buttons->addWidget(m_regenerate, 1, 1);
    bottom->addLayout(buttons);
    return bottom;
}

void ChatPane::startTimers()
{
    m_renderTimer = new QTimer(this);
    m_renderTimer->setSingleShot(true);
    m_renderTimer->setInterval(100); // while tokens stream: the transcript is redrawn 10 times a second, not per token
    connect(m_renderTimer, &QTimer::timeout, this, &ChatPane::render);
    m_prefillTimer = new QTimer(this);
    m_prefillTimer->setInterval(100);
    connect(m_prefillTimer, &QTimer::timeout, this, [this] {
        const double expected = m_feeding / std::max(1.0, m_prefillRate) * 1000.0;
        m_prefill->setValue(static_cast<int>(std::min(95.0, 100.0 * m_clock.elapsed() / std::max(1.0, expected))));
    });
}

void ChatPane::connectControls()
{
    connect(m_send, &QPushButton::clicked, this, &ChatPane::send);
    connect(m_stop, &QPushButton::clicked, this, &ChatPane::stop);
    connect(m_continue, &QPushButton::clicked, this, &ChatPane::continueAnswer);
    connect(m_regenerate, &QPushButton::clicked, this, &ChatPane::regenerate);
    connect(m_newChat, &QPushButton::clicked, this, &ChatPane::newChat);
    connect(m_transcript, &QTextBrowser::anchorClicked, this, &ChatPane::linkClicked);
    connect(m_chats, qOverload<int>(&QComboBox::activated), this, &ChatPane::switchTo);
    connect(m_complete, &QCheckBox::toggled, this, [this](bool on) {
        conv().complete = on;
        m_system->setEnabled(!on);
        m_systemRow->setVisible(!on);
        save();
    });
    connect(m_system, &QLineEdit::editingFinished, this, [this] {
        conv().systemPrompt = m_system->text();
        save();
    });
    connect(m_transcript->verticalScrollBar(), &QScrollBar::valueChanged, this, [this](int v) {
        if (!m_scrolling)
            m_follow = v >= m_transcript->verticalScrollBar()->maximum() - 4;
    });
}

ChatPane::~ChatPane() { save(); }

Conversation& ChatPane::conv() { return m_store.conversations[static_cast<size_t>(m_store.current)]; }
const Conversation& ChatPane::conversation() const { return m_store.conversations[static_cast<size_t>(m_store.current)]; }

void ChatPane::save() const
{
    const QString error = m_store.save(m_storePath);
    if (!error.isEmpty())
        m_live->setText(QString("<span style='color:%1'>the conversations cannot be saved to %2: %3</span>")
                            .arg(statusColor(Status::Error).name(), m_storePath.toHtmlEscaped(), error.toHtmlEscaped()));
}

QString ChatPane::transcriptText() const { return m_transcript->toPlainText(); }

void ChatPane::refreshChats()
{
    m_chats->clear();
    for (size_t i = 0; i < m_store.conversations.size(); ++i) {
        const auto& c = m_store.conversations[i];
        m_chats->addItem(c.title.isEmpty() ? QString("New chat") : c.title);
    }
    m_chats->setCurrentIndex(m_store.current);
}

void ChatPane::switchTo(int index)
{
    if (m_generating || index < 0 || index >= static_cast<int>(m_store.conversations.size()))
        return;
    m_store.current = index;
    m_complete->blockSignals(true);
    m_complete->setChecked(conv().complete);
    m_complete->blockSignals(false);
    m_system->setText(conv().systemPrompt);
    m_system->setEnabled(!conv().complete);
    m_systemRow->setVisible(!conv().complete);
    m_follow = true;
    refreshChats();
    render();
    updateButtons();
    save();
}

void ChatPane::newChat()
{
    if (m_generating)
        return;
    if (!conv().messages.empty()) {
        Conversation c;
        c.complete = m_complete->isChecked();
        c.systemPrompt = m_system->text();
        m_store.conversations.push_back(c);
    }
    switchTo(static_cast<int>(m_store.conversations.size()) - 1);
}

void ChatPane::modelChanged(bool hasChatTemplate)
{
    // Complete mode is the default for a model without a chat template; a conversation already going keeps its mode.
    if (conv().messages.empty())
        m_complete->setChecked(!hasChatTemplate);
    render();
}

void ChatPane::setLaunched(bool launched)
{
    m_launched = launched;
    updateButtons();
}

void ChatPane::updateButtons()
{
    const auto& msgs = conversation().messages;
    const ChatMessage* lastAssistant = nullptr;
    for (auto it = msgs.rbegin(); it != msgs.rend(); ++it)
        if (it->role != ChatMessage::Role::Notice) {
            if (it->role == ChatMessage::Role::Assistant)
                lastAssistant = &*it;
            break;
        }
    m_send->setEnabled(m_launched && !m_generating);
    m_stop->setEnabled(m_generating);
    m_continue->setEnabled(m_launched && !m_generating && lastAssistant && lastAssistant->end != stopReasonText(StopReason::Eos));
    m_regenerate->setEnabled(m_launched && !m_generating && lastAssistant);
    m_chats->setEnabled(!m_generating);
    m_newChat->setEnabled(!m_generating);
    m_complete->setEnabled(!m_generating);
}

bool ChatPane::eventFilter(QObject* watched, QEvent* event)
{
    if (watched == m_input && event->type() == QEvent::KeyPress) {
        auto* k = static_cast<QKeyEvent*>(event);
        if ((k->key() == Qt::Key_Return || k->key() == Qt::Key_Enter) && !(k->modifiers() & Qt::ShiftModifier)) {
            if (m_send->isEnabled())
                send();
            return true;
        }
    }
    return QWidget::eventFilter(watched, event);
}

void ChatPane::send()
{
    const QString text = m_input->toPlainText();
    if (m_generating || text.trimmed().isEmpty())
        return;
    if (!m_launched) {
        m_live->setText("Launch the model first: your message stays in the box.");
        return;
    }
    ChatMessage user;
    user.role = ChatMessage::Role::User;
    user.text = text;
    conv().messages.push_back(user);
    if (conv().title.isEmpty()) {
        conv().retitle();
        refreshChats();
    }
    m_input->clear();
    ChatMessage answer;
    answer.role = ChatMessage::Role::Assistant;
    conv().messages.push_back(answer);
    start(false);
}

bool ChatPane::atLastAnswer()
{
    if (m_generating || !m_launched)
        return false;
    auto& msgs = conv().messages;
    while (!msgs.empty() && msgs.back().role == ChatMessage::Role::Notice)
        msgs.pop_back(); // the notice of how the answer stopped
    return !msgs.empty() && msgs.back().role == ChatMessage::Role::Assistant;
}

void ChatPane::continueAnswer()
{
    if (atLastAnswer())
        start(true);
}

void ChatPane::regenerate()
{
    if (!atLastAnswer())
        return;
    auto& msgs = conv().messages;
    msgs.back() = ChatMessage{};
    msgs.back().role = ChatMessage::Role::Assistant;
    start(false);
}

void ChatPane::start(bool continueLast)
{
    m_answer = static_cast<int>(conv().messages.size()) - 1;
    ChatMessage& answer = conv().messages[static_cast<size_t>(m_answer)];
    GenerateRequest g;
    try {
        Conversation c = conv();
        if (!continueLast)
            c.messages.pop_back(); // the empty answer
        c.complete = m_complete->isChecked();
        c.systemPrompt = m_system->text();
        g.ids = m_session.promptIds(c, continueLast);
    } catch (const std::exception& e) {
        // Nothing is lost: a message just sent goes back into the box; the conversation is as it was.
        auto& msgs = conv().messages;
        if (!continueLast && answer.text.isEmpty()) {
            msgs.pop_back();
            if (!msgs.empty() && msgs.back().role == ChatMessage::Role::User && m_input->toPlainText().isEmpty()) {
                m_input->setPlainText(msgs.back().text);
                msgs.pop_back();
            }
        }
        m_answer = -1;
        m_live->setText(QString("<span style='color:%1'>cannot build the prompt: %2</span>")
                            .arg(statusColor(Status::Error).name(), QString(e.what()).toHtmlEscaped()));
        render();
        updateButtons();
        save();
        return;
    }
    g.params.eosIds = m_session.eosIds();
    // Each Continue gets the whole budget again (as a fresh answer would).
    g.params.maxTokens = m_maxTokens->value();
    g.sampling.temperature = m_temperature->value();
    g.sampling.topP = m_topP->value();
    g.sampling.topK = 0;
    g.sampling.seed = m_seed->value() >= 0 ? static_cast<uint64_t>(m_seed->value()) + static_cast<uint64_t>(answer.tokens)
                                           : std::random_device{}();
    const size_t keep = commonPrefix(m_held, g.ids);
    m_feeding = static_cast<int>(g.ids.size() - std::min(keep, g.ids.size()));
    m_held = g.ids;

    m_generating = true;
    m_follow = true;
    m_streamed = 0;
    m_firstTokenMs = -1;
    m_lastTokenMs = -1;
    m_clock.start();
    answer.end.clear();
    if (!continueLast) {
        answer.ttftMs = -1;
        answer.tokens = 0;
        answer.ids.clear();
        answer.text.clear();
    }
    if (m_feeding > 64) {
        m_prefill->setValue(0);
        m_prefill->show();
        m_prefillTimer->start();
    }
    m_live->setText(QString("reading %1 token(s) of prompt…").arg(m_feeding));
    try {
        m_session.generate(g);
    } catch (const std::exception& e) {
        m_generating = false;
        answer.end = "failed";
        m_live->setText(QString("cannot generate: ") + e.what());
    }
    updateButtons();
    render();
    save();
    Q_EMIT answerStarted();
}

void ChatPane::stop()
{
    if (m_generating)
        m_session.stop();
}

void ChatPane::controllerReset()
{
    m_held.clear();
    m_launched = false;
    if (m_generating && m_answer >= 0 && m_answer < static_cast<int>(conv().messages.size())) {
        conv().messages[static_cast<size_t>(m_answer)].end = "interrupted";
        ChatMessage n;
        n.role = ChatMessage::Role::Notice;
        n.text = "the model was closed (another model or key); the answer so far is kept";
        conv().messages.push_back(n);
        finishAnswer();
    }
    updateButtons();
}

void ChatPane::onControllerEvent(const ControllerEvent& e)
{
    // A fresh launch holds nothing of the conversation yet.
    if (e.kind == ControllerEvent::Kind::Launched || e.kind == ControllerEvent::Kind::Unloaded || e.kind == ControllerEvent::Kind::LaunchFailed)
        m_held.clear();
    if (!m_generating || m_answer < 0 || m_answer >= static_cast<int>(conv().messages.size()))
        return;
    ChatMessage& answer = conv().messages[static_cast<size_t>(m_answer)];
    switch (e.kind) {
    case ControllerEvent::Kind::Token: {
        const double now = m_clock.nsecsElapsed() / 1e6;
        if (e.token.token >= 0) {
            answer.ids.push_back(e.token.token);
            m_held.push_back(e.token.token);
            ++m_streamed;
            ++answer.tokens;
            if (m_firstTokenMs < 0) {
                m_firstTokenMs = now;
                if (answer.ttftMs < 0)
                    answer.ttftMs = now;
                m_prefill->hide();
                m_prefillTimer->stop();
            }
            m_lastTokenMs = now;
        }
        answer.text += QString::fromStdString(e.text);
        scheduleRender();
        break;
    }
    case ControllerEvent::Kind::Ended: {
        const GenerationResult& r = e.result;
        if (r.decodeSteps > 0 && r.decodeSeconds > 0) {
            answer.tokensPerSecond = r.decodeSteps / r.decodeSeconds;
            answer.msPerToken = 1000.0 / answer.tokensPerSecond;
        }
        if (r.prefillSeconds > 0 && m_feeding > 0)
            m_prefillRate = m_feeding / r.prefillSeconds;
        answer.end = stopReasonText(r.reason);
        if (!answer.ids.empty() && r.reason == StopReason::Eos)
            answer.ids.pop_back(); // the EOS is not part of the text; the template closes the turn itself
        m_live->setText(speedLine(answer));
        finishAnswer();
        break;
    }
    case ControllerEvent::Kind::Failed: {
        answer.end = "failed";
        if (e.result.text.size() > static_cast<size_t>(answer.text.toUtf8().size()))
            answer.text = QString::fromStdString(e.result.text);
        ChatMessage n;
        n.role = ChatMessage::Role::Notice;
        n.error = true;
        n.text = QString::fromStdString(e.text) + " — the answer so far is kept; relaunch, then Continue or Regenerate.";
        conv().messages.push_back(n);
        m_held.clear();
        m_live->setText("the answer failed: " + QString::fromStdString(e.text));
        finishAnswer();
        break;
    }
    case ControllerEvent::Kind::Notice: {
        ChatMessage n;
        n.role = ChatMessage::Role::Notice;
        n.text = QString::fromStdString(e.text);
        conv().messages.insert(conv().messages.begin() + m_answer, n);
        ++m_answer;
        scheduleRender();
        break;
    }
    default:
        break;
    }
}

void ChatPane::finishAnswer()
{
    m_generating = false;
    m_prefill->hide();
    m_prefillTimer->stop();
    if (m_answer >= 0 && m_answer < static_cast<int>(conv().messages.size())) {
        ChatMessage& a = conv().messages[static_cast<size_t>(m_answer)];
        // Speed of this stretch when the controller did not say (a stop before the second token, a failure).
        if (a.tokensPerSecond <= 0 && m_streamed > 1 && m_lastTokenMs > m_firstTokenMs) {
            a.tokensPerSecond = (m_streamed - 1) * 1000.0 / (m_lastTokenMs - m_firstTokenMs);
            a.msPerToken = 1000.0 / a.tokensPerSecond;
        }
    }
    m_answer = -1;
    render();
    updateButtons();
    save();
    Q_EMIT answerFinished();
}

void ChatPane::scheduleRender()
{
    if (!m_renderTimer->isActive())
        m_renderTimer->start();
}

void ChatPane::render()
{
    // What streamed is saved as it comes (every 2 s), so a crash or a kill loses at most that much.
    if (m_generating && (!m_saveClock.isValid() || m_saveClock.elapsed() > 2000)) {
        save();
        m_saveClock.start();
    }
    if (m_generating && m_streamed > 1 && m_answer >= 0) {
        const double tps = (m_streamed - 1) * 1000.0 / std::max(1e-3, m_lastTokenMs - m_firstTokenMs);
        m_live->setText(QString("first token %1 ms · %2 tokens/s · %3 ms/token · %4 tokens")
                            .arg(m_firstTokenMs, 0, 'f', 0)
                            .arg(tps, 0, 'f', 1)
                            .arg(1000.0 / tps, 0, 'f', 1)
                            .arg(conversation().messages[static_cast<size_t>(m_answer)].tokens));
    }
    const bool complete = conversation().complete;
    QString html = "<html><body style='font-size:11pt'>";
    const auto& msgs = conversation().messages;
    int lastAssistant = -1;
    for (int i = 0; i < static_cast<int>(msgs.size()); ++i)
        if (msgs[i].role == ChatMessage::Role::Assistant)
            lastAssistant = i;
    if (msgs.empty())
        html += "<p style='color:#888'>" +
                QString(complete ? "Type the beginning of a text: the model continues it." : "Say something to the model.") + "</p>";
    for (int i = 0; i < static_cast<int>(msgs.size()); ++i) {
        const ChatMessage& m = msgs[i];
        const QString actions = QString("<a href='act:copy:%1'>Copy</a> &nbsp; <a href='act:edit:%1'>Edit</a> &nbsp; <a href='act:delete:%1'>Delete</a>").arg(i);
        if (m.role == ChatMessage::Role::Notice) {
            html += QString("<p style='color:%1'>%2 %3 &nbsp; <small><a href='act:delete:%4'>Delete</a></small></p>")
                        .arg(m.error ? statusColor(Status::Error).name() : statusColor(Status::Working).name(), m.error ? "⚠" : "ℹ",
                             m.text.toHtmlEscaped())
                        .arg(i);
            continue;
        }
        const bool user = m.role == ChatMessage::Role::User;
        const QString who = user ? (complete ? "Text" : "You") : (complete ? "Continuation" : "Model");
        const QString colour = user ? QString("#444444") : accentColor().name();
        html += QString("<p style='margin-top:10px; margin-bottom:0px'><b style='color:%1'>%2</b></p>").arg(colour, who);
        QString body = m.text.toHtmlEscaped();
        const bool streaming = m_generating && i == m_answer;
        if (streaming)
            body += "<span style='color:" + accentColor().name() + "'>▍</span>";
        html += "<p style='white-space:pre-wrap; margin-top:2px; margin-bottom:2px'>" + body + "</p>";
        QString footer = "<small style='color:#777'>";
        if (!user) {
            const QString speed = speedLine(m);
            if (!speed.isEmpty())
                footer += speed.toHtmlEscaped() + " &nbsp; ";
        }
        if (!streaming) {
            footer += actions;
            if (!user && i == lastAssistant)
                footer += " &nbsp; <a href='act:regenerate:" + QString::number(i) + "'>Regenerate</a>";
        }
        html += "<p style='margin-top:0px'>" + footer + "</small></p>";
    }
    html += "</body></html>";

    QScrollBar* bar = m_transcript->verticalScrollBar();
    const int before = bar->value();
    m_scrolling = true;
    m_transcript->setHtml(html);
    bar->setValue(m_follow ? bar->maximum() : before);
    m_scrolling = false;
}

void ChatPane::linkClicked(const QUrl& url)
{
    const QStringList parts = url.toString().split(':');
    if (parts.size() != 3 || parts[0] != "act")
        return;
    const int i = parts[2].toInt();
    auto& msgs = conv().messages;
    if (i < 0 || i >= static_cast<int>(msgs.size()))
        return;
    const QString& action = parts[1];
    if (action == "copy") {
        QApplication::clipboard()->setText(msgs[i].text);
        m_live->setText("copied");
        return;
    }
    if (m_generating)
        return; // the transcript holds still while an answer streams
    if (action == "edit") {
        bool ok = false;
        const QString text = QInputDialog::getMultiLineText(this, "Edit message", "Message", msgs[i].text, &ok);
        if (!ok)
            return;
        msgs[i].text = text;
        msgs[i].ids.clear();
        conv().retitle();
        refreshChats();
    } else if (action == "delete") {
        msgs.erase(msgs.begin() + i);
        conv().retitle();
        refreshChats();
    } else if (action == "regenerate") {
        regenerate();
        return;
    }
    render();
    updateButtons();
    save();
}

} // namespace together::gui
