// SPDX-License-Identifier: MIT
#pragma once

#include <QDialog>
#include <QStringList>

class QLabel;
class QTreeWidget;
class QPushButton;

namespace together::gui {

// Models to pick from: the recent ones and those in the Hugging Face cache, each with its name, size,
// architecture, and whether and why it can or cannot run. Folders are read on another thread.
class ModelsDialog : public QDialog {
    Q_OBJECT
public:
    ModelsDialog(const QStringList& recent, const QString& dtype, uint64_t availableBytes, QWidget* parent = nullptr);
    ~ModelsDialog() override;
    QString chosen() const { return m_chosen; }
    QTreeWidget* list() { return m_list; }
    bool scanning() const { return m_scanning; }

Q_SIGNALS:
    void scanned();

private:
    QTreeWidget* m_list;
    QLabel* m_note;
    QPushButton* m_open;
    QString m_chosen;
    bool m_scanning = true;
    std::shared_ptr<bool> m_alive;
};

} // namespace together::gui
