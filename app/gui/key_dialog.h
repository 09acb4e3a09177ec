// SPDX-License-Identifier: MIT
#pragma once

#include <QDialog>

class QLabel;
class QLineEdit;

namespace together::gui {

class AppSession;

// The cluster key: the typeable text (to type on each worker), copy, a new key (with a warning), and the
// command that starts a worker with it. The key stays in its 0600 file; settings keep only the file's path.
class KeyDialog : public QDialog {
    Q_OBJECT
public:
    KeyDialog(AppSession& session, QWidget* parent = nullptr);
    QString shownKey() const;

private:
    void refresh();
    AppSession& m_session;
    QLineEdit* m_key;
    QLabel* m_file;
    QLineEdit* m_command;
};

} // namespace together::gui
