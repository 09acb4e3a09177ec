// SPDX-License-Identifier: MIT
#include "gui/models_dialog.h"

#include "model/model_catalog.h"
#include "session/theme.h"

#include <QCoreApplication>
#include <QDialogButtonBox>
#include <QHeaderView>
#include <QLabel>
#include <QMetaObject>
#include <QPointer>
#include <QPushButton>
#include <QTreeWidget>
#include <QVBoxLayout>

#include <thread>

namespace together::gui {

ModelsDialog::ModelsDialog(const QStringList& recent, const QString& dtype, uint64_t availableBytes, QWidget* parent)
    : QDialog(parent)
    , m_alive(std::make_shared<bool>(true))
{
    setWindowTitle("Models");
    auto* layout = new QVBoxLayout(this);
    m_note = new QLabel("Reading the recent models and the Hugging Face cache…");
    m_note->setWordWrap(true);
    layout->addWidget(m_note);
    m_list = new QTreeWidget;
    m_list->setAccessibleName("Models");
    m_list->setHeaderLabels({"Name", "Size", "Architecture", "Can run", "Path"});
    m_list->setRootIsDecorated(true);
    m_list->header()->resizeSection(0, 260);
    m_list->header()->resizeSection(3, 300);
    layout->addWidget(m_list, 1);
    auto* buttons = new QDialogButtonBox;
    m_open = buttons->addButton("Open", QDialogButtonBox::AcceptRole);
    m_open->setAccessibleName("Open");
    m_open->setEnabled(false);
    buttons->addButton(QDialogButtonBox::Cancel);
    layout->addWidget(buttons);
    connect(buttons, &QDialogButtonBox::rejected, this, &QDialog::reject);
    connect(buttons, &QDialogButtonBox::accepted, this, [this] {
        if (auto* item = m_list->currentItem(); item && !item->data(0, Qt::UserRole).toString().isEmpty()) {
            m_chosen = item->data(0, Qt::UserRole).toString();
            accept();
        }
    });
    connect(m_list, &QTreeWidget::currentItemChanged, this, [this](QTreeWidgetItem* item) {
        m_open->setEnabled(item && !item->data(0, Qt::UserRole).toString().isEmpty());
    });
    connect(m_list, &QTreeWidget::itemDoubleClicked, this, [this](QTreeWidgetItem* item) {
        if (!item->data(0, Qt::UserRole).toString().isEmpty()) {
            m_chosen = item->data(0, Qt::UserRole).toString();
            accept();
        }
    });
    resize(980, 460);

    std::vector<std::string> recentDirs;
    for (auto& r : recent)
        recentDirs.push_back(r.toStdString());
    const std::string dt = dtype.toStdString();
    QPointer<ModelsDialog> self(this);
    std::weak_ptr<bool> alive = m_alive;
    std::thread([self, alive, recentDirs, dt, availableBytes] {
        std::vector<ModelEntry> rec;
        for (auto& d : recentDirs)
            rec.push_back(describeModelFolder(d, dt, availableBytes));
        const std::string hub = huggingFaceHubDir();
        const std::vector<ModelStore> stores = scanModelStores(dt, availableBytes);
        if (alive.expired())
            return;
        QMetaObject::invokeMethod(
            qApp,
            [self, rec, stores, hub] {
                if (!self)
                    return;
                auto add = [&](const QString& group, const std::vector<ModelEntry>& entries) {
                    auto* top = new QTreeWidgetItem(self->m_list, {group + QString(" (%1)").arg(entries.size())});
                    top->setFirstColumnSpanned(true);
                    for (auto& e : entries) {
                        const QString why = e.runnable ? (e.reason.empty() ? QString("yes") : "yes; " + QString::fromStdString(e.reason))
                                                       : "no: " + QString::fromStdString(e.reason);
                        auto* item = new QTreeWidgetItem(top, {QString::fromStdString(e.name), e.weightBytes ? formatBytes(e.weightBytes) : "—",
                                                               QString::fromStdString(e.architecture.empty() ? "?" : e.architecture), why,
                                                               QString::fromStdString(e.path)});
                        item->setToolTip(3, why);
                        item->setForeground(3, statusColor(e.runnable ? Status::Ready : Status::Error));
                        if (e.runnable)
                            item->setData(0, Qt::UserRole, QString::fromStdString(e.path));
                    }
                    top->setExpanded(true);
                };
                add("Recent", rec);
                QStringList where;
                bool huggingFace = false;
                for (const ModelStore& store : stores) {
                    add(QString::fromStdString(store.name), store.entries);
                    where << QString::fromStdString(store.name + " (" + store.root + ")");
                    huggingFace = huggingFace || store.name == "Hugging Face cache";
                }
                if (!huggingFace)
                    add("Hugging Face cache", {});
                self->m_note->setText(QString("Recent models, and the models in %1. Models that cannot run say why.")
                                          .arg(where.isEmpty() ? QString::fromStdString(hub) : where.join(", ")));
                self->m_scanning = false;
                Q_EMIT self->scanned();
            },
            Qt::QueuedConnection);
    }).detach();
}

ModelsDialog::~ModelsDialog() = default;

} // namespace together::gui
