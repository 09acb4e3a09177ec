// SPDX-License-Identifier: MIT
#include "gui/key_dialog.h"

#include "session/app_session.h"

#include <QApplication>
#include <QClipboard>
#include <QDialogButtonBox>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QMessageBox>
#include <QPushButton>
#include <QVBoxLayout>

namespace together::gui {

KeyDialog::KeyDialog(AppSession& session, QWidget* parent)
    : QDialog(parent)
    , m_session(session)
{
    setWindowTitle("Cluster key");
    setObjectName("keyDialog");
    auto* layout = new QVBoxLayout(this);
    auto* intro = new QLabel("Every worker needs this key. On each machine run the command below; the first time, it asks for "
                             "the key: type it (or paste it). Machines without it can neither join nor be driven.");
    intro->setWordWrap(true);
    layout->addWidget(intro);
    auto* form = new QFormLayout;
    m_key = new QLineEdit;
    m_key->setReadOnly(true);
    m_key->setAccessibleName("Cluster key");
    QFont mono("Monospace");
    mono.setStyleHint(QFont::TypeWriter);
    m_key->setFont(mono);
    m_key->setMinimumWidth(520);
    form->addRow("Cluster key", m_key);
    m_command = new QLineEdit;
    m_command->setReadOnly(true);
    m_command->setFont(mono);
    m_command->setAccessibleName("Worker command");
    form->addRow("Worker command", m_command);
    m_file = new QLabel;
    m_file->setTextInteractionFlags(Qt::TextSelectableByMouse);
    m_file->setAccessibleName("Key file");
    form->addRow("Key file", m_file);
    layout->addLayout(form);

    auto* buttons = new QDialogButtonBox;
    auto* copy = buttons->addButton("Copy", QDialogButtonBox::ActionRole);
    copy->setAccessibleName("Copy");
    auto* copyCommand = buttons->addButton("Copy command", QDialogButtonBox::ActionRole);
    copyCommand->setAccessibleName("Copy command");
    auto* fresh = buttons->addButton("Generate new key…", QDialogButtonBox::ResetRole);
    fresh->setAccessibleName("Generate new key…");
    buttons->addButton(QDialogButtonBox::Close);
    layout->addWidget(buttons);
    connect(buttons, &QDialogButtonBox::rejected, this, &QDialog::reject);
    connect(copy, &QPushButton::clicked, this, [this] { QApplication::clipboard()->setText(m_key->text()); });
    connect(copyCommand, &QPushButton::clicked, this, [this] { QApplication::clipboard()->setText(m_command->text()); });
    connect(fresh, &QPushButton::clicked, this, [this] {
        auto answer = QMessageBox::warning(this, "Generate a new cluster key",
                                           "Every worker set up with the current key will refuse this app until you type the new key on it "
                                           "(together-worker serve asks for it). The old key is kept beside the file as .old.\n\nMake a new key?",
                                           QMessageBox::Yes | QMessageBox::Cancel, QMessageBox::Cancel);
        if (answer != QMessageBox::Yes)
            return;
        try {
            m_session.replaceKey();
        } catch (const std::exception& e) {
            QMessageBox::critical(this, "Generate a new cluster key", e.what());
        }
        refresh();
    });
    refresh();
}

QString KeyDialog::shownKey() const { return m_key->text(); }

void KeyDialog::refresh()
{
    try {
        m_key->setText(m_session.keyText());
    } catch (const std::exception& e) {
        m_key->setText(QString("cannot read the key: ") + e.what());
    }
    m_file->setText(m_session.keyFile() + "  (fingerprint " + m_session.keyFingerprint() + ")");
    m_command->setText("together-worker serve   # then type the key when it asks");
}

} // namespace together::gui
